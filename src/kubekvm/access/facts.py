"""What the access rules read of a document: the fields of a lab, a machine and a template they
need, as protocols.

The stored documents (`kubekvm.models`) satisfy them structurally, so a rule reads a
document's fields without knowing how it is stored (and without importing the database).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class LabFacts(Protocol):
    """What the access rules read of a lab (`models.Deployment` has these fields)."""

    @property
    def owner(self) -> str | None: ...
    @property
    def roster(self) -> Sequence[str]: ...


class MachineFacts(Protocol):
    """What the access rules read of a machine (`models.Machine`)."""

    @property
    def student(self) -> str | None: ...


class TemplateFacts(Protocol):
    """What the access rules read of a template (`models.Template`)."""

    @property
    def teachers(self) -> Sequence[str]: ...
