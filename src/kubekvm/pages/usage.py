"""The usage-limits part of a lab's page: the form of the lab's limits (idle shutdown, longest
run, hours per student) and, with a quota, every student's hours and a button to grant more.

The handlers read the form, ask the service layer (`UsageOperations`), and go back to the lab's
page; a refused value is shown beside its field on the lab's page rendered again (422).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import usage
from kubekvm.auth import services_for
from kubekvm.authorized import Authorized
from kubekvm.errors import KubeKVMError, ValidationFailed
from kubekvm.models import Deployment
from kubekvm.pages.common import Flash, FormState, Renderer, redirect, text

if TYPE_CHECKING:
    from kubekvm.pages.labs import LabPages

FIELDS = ("idleMinutes", "idleCpuPercent", "maxRunMinutes", "quotaHours")


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


async def usage_context(services: Authorized, lab: Deployment, *, form: FormState | None = None) -> dict[str, object]:
    """What `labs/_usage.html` shows of `lab`."""
    policy = lab.policy
    if form is None:
        form = FormState(values={"idleMinutes": _shown(policy.idle_minutes),
                                 "idleCpuPercent": _shown(policy.idle_cpu_percent),
                                 "maxRunMinutes": _shown(policy.max_run_minutes),
                                 "quotaHours": _shown(policy.quota_hours)})
    rows = await services.student_hours(lab.name) if policy.quota_hours is not None else []
    return {"usage_form": form, "usage_rows": rows, "hours_text": usage.hours_text}


class UsagePages:
    def __init__(self, *, renderer: Renderer, labs: LabPages) -> None:
        self.renderer = renderer
        self.labs = labs

    async def set_policy(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        lab = await services.get_deployment(name)
        form = await request.form()
        state = FormState(values={key: text(form, key) for key in FIELDS})
        numbers: dict[str, float | None] = {}
        for key in FIELDS:
            try:
                numbers[key] = usage.decimal_text(state.values[key], field=key)
            except ValidationFailed as error:
                state.fail(error)
        if not state.errors:
            try:
                await services.set_usage_policy(
                    lab.name, idle_minutes=numbers["idleMinutes"], idle_cpu_percent=numbers["idleCpuPercent"],
                    max_run_minutes=numbers["maxRunMinutes"], quota_hours=numbers["quotaHours"])
            except ValidationFailed as error:
                state.fail(error)
        if state.errors:
            return await self.labs.render_detail(request, lab.name, status=422,
                                                 extra=await usage_context(services, lab, form=state))
        return redirect(f"/labs/{lab.name}#usage", Flash(f"Usage limits of {lab.name} saved."))

    async def grant(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        student = str(request.path_params["student"])
        form = await request.form()
        back = f"/labs/{name}#usage"
        try:
            hours = usage.decimal_text(text(form, "hours"), field="hours")
            if hours is None:
                raise ValidationFailed("hours", "Say how many hours to grant.")
            granted = await services.grant_usage_hours(name, student=student, hours=hours)
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        left = usage.hours_text(granted.balance.remaining_hours)
        return redirect(back, Flash(f"Granted {hours:g} more hour(s) to {student}: {left} left."))


