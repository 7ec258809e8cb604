"""The roster part of a lab's page: the roster typed, pasted or from a CSV file, filled from a
directory group, and a set-password link for a student on it (shown once).

The handlers read the form, ask the service layer, and go back to the lab's roster with a flash
saying who was added, who got a new account and who is left without a machine; a refused roster
is shown again beside the rest of the lab's page (`LabPages.render_detail`, 422).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from kubekvm import roster
from kubekvm.auth import services_for
from kubekvm.errors import NotFound, ValidationFailed
from kubekvm.pages.common import Flash, Renderer, redirect, text
from kubekvm.pages.labs import LabPages, roster_context
from kubekvm.pages.reveal import reveal_and_go, revealed


class RosterPages:
    def __init__(self, *, renderer: Renderer, labs: LabPages) -> None:
        self.renderer = renderer
        self.labs = labs

    async def set_roster(self, request: Request) -> Response:
        services = services_for(request)
        lab = await services.get_deployment(str(request.path_params["name"]))
        form = await request.form()
        typed = text(form, "students")
        upload = form.get("csv")
        try:
            names = roster.parse(typed)
            if isinstance(upload, UploadFile) and upload.filename:
                content = (await upload.read(1_000_000)).decode("utf-8-sig", errors="replace")
                names += [n for n in roster.parse(content) if n not in names]
            match = text(form, "match_replicas") == "yes"
            updated, unbound, created = await services.set_roster(lab.name, students=names, match_replicas=match)
        except ValidationFailed as error:
            return await self.labs.render_detail(request, lab.name, status=422, extra=await roster_context(
                services, lab, text=typed, error=error.message))
        said = [f"Roster of {updated.name} saved: {len(updated.roster)} student(s)"]
        if created:
            said.append(f"new accounts (no password yet): {', '.join(created)}")
        return _back_to_roster(lab.name, said, unbound=unbound)

    async def roster_from_group(self, request: Request) -> Response:
        """The roster from a directory group (or refreshed from the one it came from); a refusal
        comes back as the guard's flash."""
        services = services_for(request)
        form = await request.form()
        updated, unbound, created, left_out = await services.fill_roster_from_group(
            str(request.path_params["name"]), group=text(form, "group") or None,
            match_replicas=text(form, "match_replicas") == "yes")
        said = [f"Roster of {updated.name} filled from {updated.roster_group}: {len(updated.roster)} student(s)"]
        if created:
            said.append(f"new accounts: {', '.join(created)}")
        if left_out:
            said.append(f"left out as staff: {', '.join(left_out)}")
        return _back_to_roster(updated.name, said, unbound=unbound)

    async def password_link(self, request: Request) -> Response:
        services = services_for(request)
        lab = await services.get_deployment(str(request.path_params["name"]))
        student = str(request.path_params["student"])
        if student not in lab.roster:
            raise NotFound(f"{student!r} is not on the roster of {lab.name}.")
        code = await services.password_link(student)
        link = str(request.url_for("set_password_page").include_query_params(code=code))
        return reveal_and_go(request, to=f"/labs/{lab.name}/roster/{student}/link", kind="link",
                             secret={"name": student, "link": link})

    async def password_link_page(self, request: Request) -> Response:
        """The link just made (once); afterwards, back to the lab's roster."""
        services = services_for(request)
        lab = await services.get_deployment(str(request.path_params["name"]))
        student = str(request.path_params["student"])
        carried = revealed(request, kind="link")
        if carried is None or carried["name"] != student:
            return redirect(f"/labs/{lab.name}#roster")
        return self.renderer.page(request, "labs/password_link.html", {
            "section": "labs", "lab": lab, "student": student, "link": carried["link"],
        })


def _back_to_roster(lab: str, said: list[str], *, unbound: list[str]) -> Response:
    """Back to the lab's roster saying what was done; students left without a machine make it a warning."""
    if unbound:
        said.append(f"without a machine, as the lab has fewer machines than students: {', '.join(unbound)}")
    return redirect(f"/labs/{lab}#roster", Flash("; ".join(said) + ".", "error" if unbound else "ok"))
