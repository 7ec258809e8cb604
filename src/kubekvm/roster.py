"""A lab's roster: reading a list of usernames (typed, pasted or a CSV file) and binding each
student to one machine of the lab.

Binding is stable: a student keeps the machine they have while both stay; newcomers get the
lowest-numbered free machines; a student taken off the roster frees theirs. Plain rules,
no database: the service layer reads the machines, asks `bind`, and writes the difference.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kubekvm.errors import ValidationFailed

USERNAME_MAX_LENGTH = 64
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HEADER_NAMES = ("username", "user", "login", "usuario", "name")
MAX_ROSTER = 1000


def username(value: str, *, field: str = "name") -> str:
    if not _USERNAME.fullmatch(value or ""):
        raise ValidationFailed(field, (
            f"A username uses lowercase letters, digits, '.', '_' and '-', starts with a letter "
            f"or digit and has at most {USERNAME_MAX_LENGTH} characters (got {value[:70]!r})."))
    return value


def parse(text: str) -> list[str]:
    """Usernames from a pasted list (one per line, or separated by commas, semicolons or
    spaces) or a CSV file (the column headed username/user/login, else the first column).
    Lowercased, deduplicated, in the order given; ValidationFailed names every bad one at once."""
    rows = list(csv.reader(io.StringIO(text.replace(";", ","))))
    cells: list[str] = []
    column: int | None = None
    if rows:
        header = [cell.strip().lower() for cell in rows[0]]
        column = next((header.index(h) for h in _HEADER_NAMES if h in header), None)
    if column is not None and len(rows[0]) > 1:
        cells = [row[column] for row in rows[1:] if len(row) > column]
    elif column is not None:
        cells = [cell for row in rows[1:] for cell in row]
    else:
        cells = [cell for row in rows for cell in row]
    names: list[str] = []
    for cell in cells:
        for word in cell.split():
            name = word.strip().lower()
            if name and name not in names:
                names.append(name)
    _all_usernames(names)
    if len(names) > MAX_ROSTER:
        raise ValidationFailed("students", f"A roster has at most {MAX_ROSTER} students (got {len(names)}).")
    return names


def _all_usernames(names: list[str]) -> list[str]:
    """`names` if each is a valid username, else one refusal naming every bad one (a teacher
    pasting a class list fixes them all in one go, not one per submit)."""
    bad = [name for name in names if not _USERNAME.fullmatch(name or "")]
    if len(bad) == 1:
        username(bad[0], field="students")
    if bad:
        shown = ", ".join(repr(name[:70]) for name in bad[:20])
        shown += f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValidationFailed("students", (
            f"{len(bad)} names are not valid usernames: {shown}. A username uses lowercase letters, digits, "
            f"'.', '_' and '-', starts with a letter or digit and has at most {USERNAME_MAX_LENGTH} characters."))
    return names


def students(names: Sequence[str]) -> list[str]:
    """A roster as a program sends it (GraphQL `setRoster`, or the form once parsed): every
    name a valid username, none twice, at most MAX_ROSTER; else ValidationFailed on
    `students`, checked in full before the caller writes anything."""
    if len(names) > MAX_ROSTER:
        raise ValidationFailed("students", f"A roster has at most {MAX_ROSTER} students (got {len(names)}).")
    checked = _all_usernames(list(names))
    seen: set[str] = set()
    for name in checked:
        if name in seen:
            raise ValidationFailed("students", f"{name!r} is listed twice.")
        seen.add(name)
    return checked


@dataclass(frozen=True)
class Binding:
    """machine index -> student (None: the machine is free), and the students left without a
    machine because the lab has fewer machines than students."""

    machines: dict[int, str | None]
    unbound: list[str]


def bind(*, roster: Iterable[str], machines: Mapping[int, str | None]) -> Binding:
    """`machines`: index -> the student bound now, for the machines the lab keeps."""
    wanted = list(roster)
    result: dict[int, str | None] = {}
    placed: set[str] = set()
    for index, student in sorted(machines.items()):
        keep = student if student in wanted and student not in placed else None
        result[index] = keep
        if keep is not None:
            placed.add(keep)
    waiting = [s for s in wanted if s not in placed]
    for index in sorted(result):
        if not waiting:
            break
        if result[index] is None:
            result[index] = waiting.pop(0)
    return Binding(machines=result, unbound=waiting)
