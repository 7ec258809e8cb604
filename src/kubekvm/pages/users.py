"""The admins' Users page: the list filtered by role, status and a name prefix and paged (an htmx
fragment when the filter form or a pager asks, the whole page otherwise, so it works before
JavaScript); the forms that create an account, make its set-password link (shown once, on the
page the form leads to), end its sessions, disable, enable, change the role of and delete it.
Each form posts, and is answered with a redirect back to the list as it was filtered
(Post/Redirect/Get) with a flash saying what happened or why it was refused. The operations are
`services.users`' and `services.user_admin`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import credentials, roster, validation
from kubekvm.auth import csrf_token, services_for
from kubekvm.errors import KubeKVMError, ValidationFailed
from kubekvm.models import Role
from kubekvm.pages.common import Flash, FormState, Renderer, hx_target, is_htmx, redirect, text
from kubekvm.pages.reveal import reveal_and_go, revealed

USERS_PAGE = 50
STATUSES = {"": None, "enabled": False, "disabled": True}


@dataclass(frozen=True)
class UserFilter:
    role: str = ""
    status: str = ""
    text: str = ""
    offset: int = 0

    @property
    def query(self) -> str:
        """The filter as a query string (without the offset), for pagers and redirects."""
        return urlencode({k: v for k, v in (("role", self.role), ("status", self.status), ("q", self.text)) if v})


def user_filter(raw: Any) -> UserFilter:
    """The filter of a query string (or a form's `back`); a value that means nothing is dropped
    rather than refused: a list is always shown."""
    role = str(raw.get("role") or "")
    status = str(raw.get("status") or "")
    try:
        offset = validation.offset(raw.get("offset"))
    except ValidationFailed:
        offset = 0
    return UserFilter(role=role if role in {r.value for r in Role} else "",
                      status=status if status in STATUSES else "",
                      text=str(raw.get("q") or "").strip().lower()[:64], offset=offset)


async def users_context(request: Request) -> dict[str, Any]:
    """What the users list shows, for the page and for its fragment."""
    services = services_for(request)
    chosen = user_filter(request.query_params)
    page = await services.page_users(role=Role(chosen.role) if chosen.role else None,
                                     disabled=STATUSES[chosen.status], text=chosen.text, offset=chosen.offset,
                                     limit=USERS_PAGE)
    return {"users": page.items, "total": page.total, "filter": chosen, "page_size": USERS_PAGE,
            "roles": [r.value for r in Role], "me_name": services.actor.name,
            "sessions": await services.session_counts([u.name for u in page.items])}


class UserPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def fragment(self, request: Request) -> Response | None:
        """The list alone, when htmx asks for it (the filter form, a pager)."""
        if is_htmx(request) and hx_target(request) == "user-list":
            return self.renderer.htmx(self.renderer.fragment("accounts/_user_list.html",
                                                             csrf_token=csrf_token(request),
                                                             **await users_context(request)))
        return None

    def _back(self, request: Request, form: Any, flash: Flash) -> Response:
        back = user_filter(dict(parse_qsl(str(form.get("back") or ""))))
        query = "&".join(part for part in (back.query, f"offset={back.offset}" if back.offset else "") if part)
        to = "/users" + (f"?{query}" if query else "")
        return redirect(to, flash)

    async def _act(self, request: Request, work: Any) -> Response:
        form = await request.form()
        try:
            said = await work(form)
        except KubeKVMError as error:
            return self._back(request, form, Flash(error.message, "error"))
        return self._back(request, form, Flash(said))

    async def users(self, request: Request) -> Response:
        listed = await self.fragment(request)
        if listed is not None:
            return listed
        return await self._users(request, FormState(values={"name": "", "role": "teacher"}))

    async def _users(self, request: Request, state: FormState, *, status: int = 200,
                     link: tuple[str, str] | None = None) -> Response:
        carried = revealed(request, kind="link")
        if link is None and carried is not None:
            link = (carried["name"], carried["link"])
        return self.renderer.page(request, "accounts/users.html", {
            "section": "users", "state": state, "link": link, **await users_context(request),
        }, status=status)

    async def end_sessions(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        ended = await services.end_user_sessions(name)
        return redirect("/users", Flash(f"{name}: {ended} session(s) ended; they must sign in again."))

    async def create_user(self, request: Request) -> Response:
        services = services_for(request)
        form = await request.form()
        state = FormState(values={"name": text(form, "name").lower(), "role": text(form, "role")})
        password = form.get("password")
        try:
            role = Role(state.values["role"])
        except ValueError:
            state.fail(ValidationFailed("role", "Choose admin, teacher or student."))
            state.check(lambda: roster.username(state.values["name"]))
            if isinstance(password, str) and password:
                state.check(lambda: credentials.check_password_rules(password))
        if not state.errors:
            try:
                user = await services.create_user(name=state.values["name"], role=role,
                                                  password=password if isinstance(password, str) and password else None)
            except ValidationFailed as error:
                state.fail(error)
            except KubeKVMError as error:
                state.fail(ValidationFailed("name", error.message))
            else:
                return redirect("/users", Flash(f"Account {user.name} ({user.role.value}) created."
                                           + ("" if user.password_hash else " It has no password yet: "
                                              "make a set-password link for it.")))
        return await self._users(request, state, status=422)

    async def user_link(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        code = await services.password_link(name)
        link = str(request.url_for("set_password_page").include_query_params(code=code))
        return reveal_and_go(request, to="/users", kind="link", secret={"name": name, "link": link})

    async def disable(self, request: Request) -> Response:
        return await self._switch(request, disabled=True)

    async def enable(self, request: Request) -> Response:
        return await self._switch(request, disabled=False)

    async def _switch(self, request: Request, *, disabled: bool) -> Response:
        name = str(request.path_params["name"])

        async def work(form: Any) -> str:
            services = services_for(request)
            if disabled:
                await services.disable_user(name)
                return f"{name} is disabled: their sessions ended and their tokens no longer work."
            await services.enable_user(name)
            return f"{name} is enabled again."
        return await self._act(request, work)

    async def role(self, request: Request) -> Response:
        name = str(request.path_params["name"])

        async def work(form: Any) -> str:
            try:
                role = Role(text(form, "role"))
            except ValueError:
                raise ValidationFailed("role", "Choose admin, teacher or student.") from None
            await services_for(request).set_user_role(name, role)
            return f"{name} is now a {role.value}."
        return await self._act(request, work)

    async def delete(self, request: Request) -> Response:
        name = str(request.path_params["name"])

        async def work(form: Any) -> str:
            heir = text(form, "reassign_to").lower() or None
            gone = await services_for(request).delete_user(name, reassign_to=heir)
            said = f"Account {name} deleted."
            if gone.labs_reassigned:
                said += f" Its {len(gone.labs_reassigned)} lab(s) are {heir}'s now."
            if gone.rosters_left:
                said += f" Taken off the roster of {', '.join(gone.rosters_left)}."
            return said
        return await self._act(request, work)
