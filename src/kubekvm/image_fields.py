"""The golden images' parts of other documents (`kubekvm.models`): a template's versions, and the
pulls a host's agent reports. Plain pydantic models, kept here so the documents module stays
one screenful per document.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field


def _now() -> datetime:
    # As `models.utcnow`: Mongo keeps milliseconds.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class TemplateVersion(BaseModel):
    """One published version of a template: an image of the store (`image_models.Image`)."""

    number: int
    digest: str
    note: str = ""
    author: str
    created_at: datetime = Field(default_factory=_now)
    retired: bool = False


class ImagePull(BaseModel):
    """A store image a host's agent is pulling (or failed to), as its last heartbeat said."""

    image: str
    done: int = 0
    total: int | None = None
    error: str = ""


# How long a host has to start uploading a machine being published.
PICKUP_SECONDS = 15 * 60


class PublishJob(BaseModel):
    """A machine being published as a template version (`services.publishing`): asked for while
    it is stopped, flattened and uploaded by its host's agent; the machine is locked meanwhile."""

    id: str
    template: str
    new_template: bool = False
    note: str = ""
    requested_by: str
    state: str = "requested"  # requested | uploading | done | failed
    done: int = 0
    total: int | None = None
    message: str = ""
    at: datetime = Field(default_factory=_now)

    @property
    def active(self) -> bool:
        """Under way, so the machine is locked. A job its host never took up (the host is gone)
        lapses after `PICKUP_SECONDS`: the machine is not locked for good by a dead host."""
        if self.state == "uploading":
            return True
        if self.state != "requested":
            return False
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)
        return (_now() - at).total_seconds() < PICKUP_SECONDS
