"""Input rules shared by the pages and GraphQL.

A lab name becomes part of VM, domain and disk names on the hosts, so it is held to the DNS
label subset (lowercase letters, digits, inner hyphens, 1-40 characters): nothing in it can
mean anything to a shell, a path or libvirt's XML.
"""

from __future__ import annotations

import re

from kubekvm.errors import ValidationFailed

NAME_MAX_LENGTH = 40
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.qcow2")
TITLE_MAX_LENGTH = 120
DESCRIPTION_MAX_LENGTH = 2000
OS_FAMILIES = ("linux", "windows")


def name(value: str, *, field: str = "name") -> str:
    """A lab or template name, or ValidationFailed saying which rule it breaks."""
    if value == "":
        raise ValidationFailed(field, "A name is required.")
    if len(value) > NAME_MAX_LENGTH:
        raise ValidationFailed(
            field, f"A name has at most {NAME_MAX_LENGTH} characters (this one has {len(value)})."
        )
    if not _NAME.fullmatch(value):
        raise ValidationFailed(
            field,
            "Use only lowercase letters a-z, digits and hyphens, starting and ending with a "
            "letter or digit (for example: redes-2025).",
        )
    return value


def title(value: str | None, *, fallback: str) -> str:
    text = (value or "").strip()
    if len(text) > TITLE_MAX_LENGTH:
        raise ValidationFailed("title", f"A title has at most {TITLE_MAX_LENGTH} characters.")
    return text or fallback


def description(value: str | None) -> str:
    text = (value or "").strip()
    if len(text) > DESCRIPTION_MAX_LENGTH:
        raise ValidationFailed(
            "description", f"A description has at most {DESCRIPTION_MAX_LENGTH} characters."
        )
    return text


def replicas(value: int, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed("replicas", "Replicas must be a whole number.")
    if value < 1 or value > maximum:
        raise ValidationFailed(
            "replicas", f"Replicas must be between 1 and {maximum} (one VM per student)."
        )
    return value


def whole_number(value: int, *, field: str, minimum: int, maximum: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(field, f"{unit.capitalize()} must be a whole number.")
    if value < minimum or value > maximum:
        raise ValidationFailed(field, f"Must be between {minimum} and {maximum} {unit}.")
    return value


def image(value: str) -> str:
    if not _IMAGE.fullmatch(value) or ".." in value:
        raise ValidationFailed(
            "image",
            "The image is the file name of a qcow2 base image in each host's image directory, "
            "for example ubuntu22.04.qcow2 (letters, digits, '.', '_', '-').",
        )
    return value


def os_family(value: str) -> str:
    if value not in OS_FAMILIES:
        raise ValidationFailed("os", f"The OS must be one of: {', '.join(OS_FAMILIES)}.")
    return value
