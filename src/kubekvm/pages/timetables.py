"""The course pages: a lab's timetable form (weekly slots, one-off sessions, closures, lead time,
zone, last day), its usage as CSV, and the unused labs an admin sees on the Server page.

The form takes the timetable as text, one slot per line ("mon,wed 09:00-11:00"), and checks
every field against `kubekvm.timetable` before calling the operation, so a teacher sees every
mistake at once, each beside its field; the operation checks again. The lab's page shows the
timetable, what is due next and the course's end (`labs/_timetable.html`, context from `course`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import timetable, timetable_text, validation
from kubekvm.auth import services_for
from kubekvm.errors import ValidationFailed
from kubekvm.pages.common import Flash, FormState, Renderer, is_htmx, raw, text
from kubekvm.services.timetables import Course, parse_day

FIELDS = ("timeZone", "leadMinutes", "slots", "sessions", "closures", "endsOn")


@dataclass(frozen=True)
class Shown:
    """A course as its page shows it: times in the timetable's own zone."""

    course: Course
    next_start: str
    next_stop: str
    ends_at: str
    deleted_at: str


def local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return ""
    return f"{moment.astimezone(timetable.time_zone(zone)):%a %d %b %Y, %H:%M}"


def shown(course: Course) -> Shown:
    zone = course.rule.zone
    return Shown(course, local(course.next_start, zone), local(course.next_stop, zone), local(course.ends_at, zone),
                 local(course.deleted_at, zone))


def values_of(course: Course) -> dict[str, str]:
    rule = course.rule
    return {"timeZone": rule.zone, "leadMinutes": str(int(rule.lead.total_seconds() // 60)),
            "slots": timetable_text.text_of(rule.slots), "sessions": timetable_text.text_of(rule.sessions),
            "closures": timetable_text.text_of(rule.closures),
            "endsOn": rule.ends_on.isoformat() if rule.ends_on else ""}


def read(state: FormState) -> timetable.Timetable | None:
    """The form's timetable, or None with every field's refusal noted in `state`."""
    values = state.values
    parts: dict[str, object] = {}
    checks: dict[str, Callable[[], object]] = {
        "timeZone": lambda: timetable.time_zone(values["timeZone"]).key,
        "leadMinutes": lambda: timetable_text.lead(validation.whole_number(
            values["leadMinutes"], field="leadMinutes", minimum=0, maximum=timetable_text.MAX_LEAD_MINUTES,
            label="The lead time")),
        "slots": lambda: timetable_text.parse_slots(values["slots"]),
        "sessions": lambda: timetable_text.parse_sessions(values["sessions"]),
        "closures": lambda: timetable_text.parse_closures(values["closures"]),
        "endsOn": lambda: parse_day(values["endsOn"]),
    }
    for key, check in checks.items():
        try:
            parts[key] = check()
        except ValidationFailed as error:
            state.fail(error)
    if state.errors:
        return None
    return timetable.Timetable(zone=str(parts["timeZone"]), lead=parts["leadMinutes"],  # type: ignore[arg-type]
                               slots=parts["slots"], sessions=parts["sessions"],  # type: ignore[arg-type]
                               closures=parts["closures"], ends_on=parts["endsOn"])  # type: ignore[arg-type]


class CoursePages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def form(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        lab = await services.get_deployment(name)
        course = await services.course(name)
        return self._form(request, lab.name, FormState(values=values_of(course)))

    async def save(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        lab = await services.get_deployment(name)
        form = await request.form()
        state = FormState(values={key: raw(form, key) if key in ("slots", "sessions", "closures") else text(form, key)
                                  for key in FIELDS})
        rule = read(state)
        if rule is not None:
            try:
                course = await services.set_timetable(lab.name, rule=rule)
            except ValidationFailed as error:
                state.fail(error)
            else:
                nxt = shown(course).next_start
                said = f"Timetable of {lab.name} saved." + (f" Next start: {nxt}." if nxt else "")
                return self.renderer.done(request, to=f"/labs/{lab.name}#timetable", flash=Flash(said))
        return self._form(request, lab.name, state, status=422)

    def _form(self, request: Request, lab: str, state: FormState, *, status: int = 200) -> Response:
        context = {"section": "labs", "lab": lab, "state": state}
        if is_htmx(request) and request.method == "POST":
            return self.renderer.htmx(self.renderer.fragment("labs/_timetable_form.html", **context), status=status)
        return self.renderer.page(request, "labs/timetable.html", context, status=status)

    async def usage_csv(self, request: Request) -> Response:
        """The lab's machines, their students and times, as a spreadsheet reads them."""
        services = services_for(request)
        name = str(request.path_params["name"])
        rows = await services.lab_usage(name)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["machine", "student", "state", "host", "created", "last change", "last report",
                         "hours running", "student hours outside slots", "student hours left"])
        for row in rows:
            writer.writerow([row.machine, _cell(row.student), row.state, row.host, row.created_at.isoformat(),
                             row.last_change.isoformat(), row.last_report.isoformat() if row.last_report else "",
                             f"{row.running_hours:.2f}", _hours(row.outside_slot_hours), _hours(row.remaining_hours)])
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{name}-usage.csv"', "Cache-Control": "no-store"})


def _hours(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _cell(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (a username is the only free text here)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@") else value
