"""Input rules shared by the pages and GraphQL: names, free text and numbers.

Everything a person or a program sends is judged here, by pure functions that raise
`ValidationFailed` naming the field, so a form shows the message beside the field and GraphQL
answers `VALIDATION_FAILED` with `extensions.field`, and nothing is written.

- A lab name becomes part of VM, domain and disk names on the hosts, so it is held to the DNS
  label subset (lowercase letters, digits, inner hyphens, 1-40 characters): nothing in it can
  mean anything to a shell, a path or libvirt's XML. A name refused only for its form (upper
  case, spaces, accents) comes with the valid name it would become (`suggest_name`, which the
  legacy import also uses to make old names valid), so a person need not guess the rule.
- Free text (titles, descriptions, labels, notes) goes through `text`: a length limit, and no
  control characters (a text area may keep newlines and tabs), no lone surrogates (MongoDB's
  BSON cannot store them) and no bidirectional overrides (they make a name read as another).
  Text recorded rather than judged (an agent's message about a machine, the name a refused
  request tried) goes through `note`, which keeps it with those characters replaced, and
  `storable` refuses a request holding a lone surrogate anywhere, before anything runs.
- Every field of a request is judged before any is refused (`Checks`), so a request with a bad
  name and a bad number hears about both at once (`FieldErrors`).
- Every number goes through `whole_number`, whether it comes as a form's string or as a
  GraphQL Int: ASCII digits only (no `+`, `²`, `٣`, `1_0`, `0x10`, `1e3` or spaces, which
  Python's `int()` would take or choke on), at most 18 of them, then a range. Paging arguments
  (`offset`, `limit`) are refused out of range rather than clamped, so a client learns that
  its page does not exist instead of silently getting another one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from kubekvm.errors import FieldErrors, ValidationFailed, each_field

T = TypeVar("T")

NAME_MAX_LENGTH = 40
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.qcow2")
TITLE_MAX_LENGTH = 120
DESCRIPTION_MAX_LENGTH = 2000
NOTE_MAX_LENGTH = 500
OS_FAMILIES = ("linux", "windows")

# Numbers: an optional minus (so "-5" gets the range's message, not "not a number") and 1-18
# ASCII digits, which always fit MongoDB's 64-bit integers.
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
OFFSET_MAX = 1_000_000  # further than any real list goes; beyond it a skip only costs the database
DEPLOYMENTS_PAGE_MAX = 1000  # labs in one page of `deployments`
AUDIT_PAGE_MAX = 500  # entries in one page of `auditLog`

# Right-to-left/left-to-right embeddings, overrides and isolates: invisible, and they reorder
# what a reader sees ("Trojan Source"), so a title could show another lab's name.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_TEXT_AREA_KEEPS = frozenset("\n\t")


_NOT_NAME_RUN = re.compile(r"[^a-z0-9]+")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def suggest_name(text: str, *, split_words: bool = False) -> str | None:
    """The valid name `text` would become, or None when nothing of it survives.

    Accents are dropped (`Señales` → `senales`), letters lowercased, every run of anything else
    (spaces, `_`, `.`, punctuation) becomes one hyphen, hyphens at either end go, and the result
    is cut to NAME_MAX_LENGTH characters. A valid name comes back unchanged. `split_words` also
    splits CamelCase words (`RedesNeuronales` → `redes-neuronales`), as the 2019 application's
    template types are written; a name a person typed keeps its letters together (`D2` → `d2`).
    """
    if split_words:
        text = _CAMEL_HUMP.sub("-", text)
    # NFKD splits an accented letter into the letter and its combining mark (dropped below as
    # not ASCII); it also turns compatibility forms (ﬁ, ²) into plain letters and digits.
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = _NOT_NAME_RUN.sub("-", plain).strip("-")[:NAME_MAX_LENGTH].rstrip("-")
    return slug or None


class Checks:
    """Judge every field of a request, then refuse with all the failures at once:
    `value = checks(lambda: validation.name(x))` gives the checked value or None (when it failed),
    and `checks.done()` raises ValidationFailed (one field) or FieldErrors (several), if any."""

    def __init__(self) -> None:
        self.failures: list[ValidationFailed] = []

    def __call__(self, check: Callable[[], T]) -> T | None:
        try:
            return check()
        except ValidationFailed as error:
            self.fail(error)
            return None

    def fail(self, error: ValidationFailed) -> None:
        """Record a refusal (the first per field counts: it is the one to fix first)."""
        seen = {f.field for f in self.failures}
        self.failures += [e for e in each_field(error) if e.field not in seen]

    def done(self) -> None:
        if len(self.failures) == 1:
            raise self.failures[0]
        if self.failures:
            raise FieldErrors(list(self.failures))


def name(value: str, *, field: str = "name") -> str:
    """A lab or template name, or ValidationFailed saying which rule it breaks (with the valid
    name it would become as `suggestion`, where there is one)."""
    if value == "":
        raise ValidationFailed(field, "A name is required.")
    if len(value) > NAME_MAX_LENGTH:
        raise ValidationFailed(
            field, f"A name has at most {NAME_MAX_LENGTH} characters (this one has {len(value)}).",
            suggestion=suggest_name(value),
        )
    if not _NAME.fullmatch(value):
        suggestion = suggest_name(value)
        rule = ("names hold only lowercase letters a-z, digits and hyphens, starting and ending "
                "with a letter or digit")
        if suggestion is None:
            raise ValidationFailed(field, "Use only lowercase letters a-z, digits and hyphens, starting and "
                                          "ending with a letter or digit (for example: redes-2025).")
        hint = "Use lowercase" if value.lower() == suggestion else "Try"
        raise ValidationFailed(field, f"{hint}: {suggestion} ({rule}).", suggestion=suggestion)
    return value


def unstorable(value: str) -> bool:
    """Whether `value` holds a lone surrogate, which no UTF-8 (so no BSON, no page) can carry."""
    return any("\ud800" <= char <= "\udfff" for char in value)


def _refused_character(value: str, *, multiline: bool) -> str | None:
    for char in value:
        if multiline and char in _TEXT_AREA_KEEPS:
            continue
        category = unicodedata.category(char)
        if category == "Cc" or (category in ("Zl", "Zp") and not multiline):
            return ("control characters (such as NUL); newlines and tabs are fine" if multiline
                    else "control characters (such as NUL, tabs or line breaks)")
        if category == "Cs":
            return "broken characters (a lone UTF-16 surrogate)"
        if char in _BIDI_CONTROLS:
            return "invisible text-direction characters (bidirectional overrides)"
    return None


def text(value: str | None, *, field: str, label: str, max_length: int, multiline: bool = False,
         required: bool = False) -> str:
    """Free text as stored: stripped, CRLF (what browsers send from a text area) made LF, and
    refused when too long or holding a character nobody types on purpose."""
    cleaned = (value or "").replace("\r\n", "\n").strip()
    refused = _refused_character(cleaned, multiline=multiline)
    if refused:
        raise ValidationFailed(field, f"{label} may not contain {refused}.")
    if len(cleaned) > max_length:
        raise ValidationFailed(field, f"{label} has at most {max_length} characters (this one has {len(cleaned)}).")
    if required and not cleaned:
        raise ValidationFailed(field, f"{label} is required.")
    return cleaned


def note(value: str, *, max_length: int = NOTE_MAX_LENGTH, multiline: bool = True) -> str:
    """Text recorded rather than judged (an agent's message about a machine, what an audit entry
    says was attempted): kept, as refusing it would lose the record it comes with, but every
    character `text` refuses becomes U+FFFD."""
    kept = "".join("\ufffd" if _refused_character(char, multiline=multiline) else char
                   for char in value.replace("\r\n", "\n"))
    return kept[:max_length]


def title(value: str | None, *, fallback: str, field: str = "title") -> str:
    return text(value, field=field, label="A title", max_length=TITLE_MAX_LENGTH) or fallback


def description(value: str | None) -> str:
    return text(value, field="description", label="A description", max_length=DESCRIPTION_MAX_LENGTH,
                multiline=True)


def whole_number(value: int | str | None, *, field: str, minimum: int, maximum: int, unit: str = "",
                 label: str | None = None, default: int | None = None) -> int:
    """The one parser for numbers from people and programs: a form's or a query string's text,
    or a GraphQL Int; `default` stands in for an empty or missing one where the field may be
    left out."""
    said = label or (unit.capitalize() if unit else "This")
    if default is not None and (value is None or value == ""):
        value = default
    number: int
    if isinstance(value, str):
        if not _WHOLE_NUMBER.fullmatch(value):
            raise ValidationFailed(field, f"{said} must be a whole number, typed with the digits 0-9.")
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ValidationFailed(field, f"{said} must be a whole number.")
    if number < minimum or number > maximum:
        between = f"between {minimum} and {maximum}" + (f" {unit}" if unit else "")
        raise ValidationFailed(field, f"{said} must be {between}." if label else f"Must be {between}.")
    return number


def replicas(value: int | str, *, maximum: int) -> int:
    return whole_number(value, field="replicas", minimum=1, maximum=maximum, label="Replicas",
                        unit="(one VM per student)")


# A template's sizes, by the field names forms and GraphQL give them: (minimum, maximum, unit).
TEMPLATE_SIZES = {"vcpus": (1, 64, "vCPUs"), "memoryMib": (64, 1024 * 1024, "MiB"), "diskGib": (1, 16384, "GiB")}


def template_size(value: int | str, *, field: str, label: str | None = None) -> int:
    """A template's `vcpus`, `memoryMib` or `diskGib`."""
    minimum, maximum, unit = TEMPLATE_SIZES[field]
    return whole_number(value, field=field, minimum=minimum, maximum=maximum, unit=unit, label=label)


def offset(value: int | str | None, *, field: str = "offset") -> int:
    """Where a page of a list starts: 0 to OFFSET_MAX (missing or empty: 0)."""
    return whole_number(value, field=field, minimum=0, maximum=OFFSET_MAX, label="The offset", default=0)


def limit(value: int | str | None, *, maximum: int, field: str = "limit") -> int:
    """How many items a page holds: 1 to `maximum` (missing or empty: `maximum`)."""
    return whole_number(value, field=field, minimum=1, maximum=maximum, label="The limit", default=maximum)


def image(value: str) -> str:
    if not _IMAGE.fullmatch(value) or ".." in value:
        raise ValidationFailed(
            "image",
            "The image is the file name of a qcow2 base image in each host's image directory, "
            "for example ubuntu22.04.qcow2 (letters, digits, '.', '_', '-').",
        )
    return value


def image_names(values: Iterable[str]) -> list[str]:
    """The images a host reports, less the file names no template could name (a template's
    image must pass `image`): sorted, each once."""
    return sorted({v for v in values if _IMAGE.fullmatch(v) and ".." not in v})


def os_family(value: str) -> str:
    if value not in OS_FAMILIES:
        raise ValidationFailed("os", f"The OS must be one of: {', '.join(OS_FAMILIES)}.")
    return value


def _strings(value: Any, field: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield field, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key, field)
            yield from _strings(item, str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item, field)


def storable(value: Any, *, field: str) -> None:
    """Refuse a value (a string, or lists and mappings of them) holding a lone surrogate
    anywhere, as a JSON `\\ud800` can: the database cannot store or even look one up, and no
    person types one. The field named is the innermost mapping key holding it, else `field`."""
    for where, text_ in _strings(value, field):
        if unstorable(text_):
            raise ValidationFailed(where, "This text contains a broken character (a lone UTF-16 surrogate), "
                                          "which cannot be stored.")
