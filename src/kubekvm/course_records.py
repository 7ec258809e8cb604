"""The documents of running a course: a lab's timetable and end date, the record of every
timetable event the scheduler fired (or missed), and which 2019 deployment became which lab.

A lab's timetable is a document of its own (`lab_schedules`, one per lab), not fields of the
lab: the lab's compare-and-set `version` guards its machines' spec, and editing a timetable
changes no machine. Times and dates are kept as the text a person reads ("09:00", "2026-12-24"),
so the stored document is the timetable as typed, in its zone; `kubekvm.timetable` turns it into
instants.

`ScheduleFire` is keyed by `<lab>|<event id>` (`kubekvm.timetable.Event.id`): inserting it is
how a replica claims an event, and the unique `_id` refuses a second claim, so an event fires
once even if two replicas both believed they held the scheduler's lease around a handover.
All three go with their lab (`Convergence.lab_removed`).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pymongo
from beanie import Document, Indexed
from pydantic import BaseModel, Field

from kubekvm import timetable
from kubekvm.models import Stored, utcnow


class SlotRecord(BaseModel):
    days: list[int]
    start: str
    end: str


class SessionRecord(BaseModel):
    day: str
    start: str
    end: str


class ClosureRecord(BaseModel):
    first: str
    last: str
    reason: str = ""


class LabSchedule(Stored):
    """A lab's timetable (in `time_zone`) and the course's last day."""

    lab: Indexed(str, unique=True)  # type: ignore[valid-type]
    time_zone: str
    lead_minutes: int = 0
    slots: list[SlotRecord] = Field(default_factory=list)
    sessions: list[SessionRecord] = Field(default_factory=list)
    closures: list[ClosureRecord] = Field(default_factory=list)
    ends_on: str | None = None
    # Events before this are not the timetable's to fire or to call missed (it did not exist).
    updated_at: datetime = Field(default_factory=utcnow)
    updated_by: str = ""

    class Settings:
        name = "lab_schedules"

    def rule(self) -> timetable.Timetable:
        return timetable.Timetable(
            zone=self.time_zone, lead=timedelta(minutes=self.lead_minutes),
            slots=tuple(timetable.WeeklySlot(tuple(s.days), time.fromisoformat(s.start), time.fromisoformat(s.end))
                        for s in self.slots),
            sessions=tuple(timetable.Session(date.fromisoformat(s.day), time.fromisoformat(s.start),
                                             time.fromisoformat(s.end)) for s in self.sessions),
            closures=tuple(timetable.Closure(date.fromisoformat(c.first), date.fromisoformat(c.last), c.reason)
                           for c in self.closures),
            ends_on=date.fromisoformat(self.ends_on) if self.ends_on else None,
        )

    @classmethod
    def of(cls, lab: str, rule: timetable.Timetable, *, by: str) -> LabSchedule:
        return cls(
            lab=lab, time_zone=rule.zone, lead_minutes=int(rule.lead.total_seconds() // 60),
            slots=[SlotRecord(days=list(s.days), start=f"{s.start:%H:%M}", end=f"{s.end:%H:%M}") for s in rule.slots],
            sessions=[SessionRecord(day=s.day.isoformat(), start=f"{s.start:%H:%M}", end=f"{s.end:%H:%M}")
                      for s in rule.sessions],
            closures=[ClosureRecord(first=c.first.isoformat(), last=c.last.isoformat(), reason=c.reason)
                      for c in rule.closures],
            ends_on=rule.ends_on.isoformat() if rule.ends_on else None, updated_by=by,
        )


class ScheduleFire(Stored):
    """One event of a lab's timetable (or its course end) as the scheduler handled it:
    `outcome` fired, missed (found later than its grace: recorded, not fired), failed, or
    claimed (the replica that claimed it stopped before firing it)."""

    id: str  # type: ignore[assignment]  # "<lab>|<event id>": the claim (see the module's docstring)
    lab: str
    kind: str
    due: datetime
    outcome: str
    message: str = ""
    replica: str = ""
    at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "schedule_fires"
        indexes = [pymongo.IndexModel([("lab", pymongo.ASCENDING), ("due", pymongo.DESCENDING)])]


class LegacyImport(Stored):
    """A deployment of the 2019 application (its `_id` there, as text) and the lab it became."""

    id: str  # type: ignore[assignment]
    lab: Indexed(str)  # type: ignore[valid-type]
    source_name: str
    imported_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "legacy_imports"


COURSE_MODELS: list[type[Document]] = [LabSchedule, ScheduleFire, LegacyImport]
