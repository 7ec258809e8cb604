"""The pages of accounts: sign in and out, the first admin (/setup), set-password links, your
account and API tokens, the admins' users and audit log pages, and a student's "My VMs".

Signing in and out, the first admin and a password set with a link go through the caller's
operations (`kubekvm.services.users`), which write their audit entries. Passwords and tokens
are never put in a page except a new token, once, on the page that made it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kubekvm import credentials, roster, validation
from kubekvm.auth import actor_of, services_for, sign_in, sign_out
from kubekvm.errors import KubeKVMError, NotFound, Throttled, Unauthenticated, Unavailable, ValidationFailed
from kubekvm.models import ApiToken, Role
from kubekvm.pages.common import Flash, FormState, Renderer, safe_next, set_flash, status_of, text
from kubekvm.pages.fragments import my_rows
from kubekvm.pages.identity import login_page
from kubekvm.pages.reveal import reveal_and_go, revealed
from kubekvm.pages.users import UserPages, users_context
from kubekvm.services.accounts import Accounts

AUDIT_PAGE = 100


def _go(to: str, flash: Flash | None = None) -> Response:
    response = RedirectResponse(to, status_code=303)
    if flash is not None:
        set_flash(response, flash)
    return response


class AccountPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer
        self.user_pages = UserPages(renderer=renderer)

    # ----------------------------------------------------------------- sign in

    async def login_form(self, request: Request) -> Response:
        if actor_of(request).is_user:
            return _go(safe_next(request.query_params.get("next", ""), "/"))
        return self._login(request, FormState(values={"name": "", "next": request.query_params.get("next", "/")}))

    def _login(self, request: Request, state: FormState, *, status: int = 200) -> Response:
        return login_page(self.renderer, request, state, status=status)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = text(form, "name").lower(), form.get("password")
        state = FormState(values={"name": name, "next": text(form, "next")})
        try:
            user = await services_for(request).sign_in(name=name,
                                                       password=password if isinstance(password, str) else "")
        except Throttled as error:
            state.errors["form"] = error.message
            response = self._login(request, state, status=429)
            response.headers["Retry-After"] = str(error.retry_after)
            return response
        except (Unauthenticated, Unavailable) as error:
            state.errors["form"] = error.message
            return self._login(request, state, status=status_of(error))
        except ValidationFailed as error:  # a directory's username that cannot be one here
            state.errors["form"] = error.message
            return self._login(request, state, status=422)
        await sign_in(request, user=user)
        home = "/my" if user.role == Role.STUDENT else "/"
        return _go(safe_next(state.values["next"], home) if state.values["next"] not in ("", "/") else home)

    async def logout(self, request: Request) -> Response:
        actor = actor_of(request)
        provider = None
        if actor.is_user:
            await services_for(request).sign_out()
            accounts: Accounts = request.app.state.accounts
            record = await accounts.session_record(actor.session) if actor.session else None
            provider = record.provider if record else None
        await sign_out(request)
        if provider:  # offer the provider's own sign-out too
            return _go(f"/signed-out?{urlencode({'provider': provider})}")
        return _go("/login", Flash("You are signed out."))

    # --------------------------------------------------------- the first admin

    async def setup_form(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        if not await services_for(request).setup_open(code):
            raise NotFound("There is nothing to set up: an admin exists already, or this link's code is wrong or old.")
        return self.renderer.page(request, "accounts/setup.html", {
            "state": FormState(values={"name": "", "code": code}), "section": "login"})

    async def setup(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={"name": text(form, "name").lower(), "code": text(form, "code")})
        password, again = form.get("password"), form.get("again")
        if password != again:
            state.errors["again"] = "The two passwords differ."
            state.check(lambda: roster.username(state.values["name"]))
            state.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                user = await services_for(request).complete_setup(
                    code=state.values["code"], name=state.values["name"],
                    password=password if isinstance(password, str) else "")
            except ValidationFailed as error:
                state.fail(error)
            else:
                await sign_in(request, user=user)
                return _go("/", Flash(f"Welcome, {user.name}: you are the first admin. "
                                      "Add teachers on the Users page."))
        return self.renderer.page(request, "accounts/setup.html", {"state": state, "section": "login"}, status=422)

    # -------------------------------------------------------- set-password link

    async def set_password_form(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        user = await services_for(request).password_link_user(code)
        return self.renderer.page(request, "accounts/set_password.html", {
            "state": FormState(values={"code": code}), "user": user, "section": "login"})

    async def set_password(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={"code": text(form, "code")})
        services = services_for(request)
        user = await services.password_link_user(state.values["code"])
        password, again = form.get("password"), form.get("again")
        if password != again:
            state.errors["again"] = "The two passwords differ."
            state.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                user = await services.set_password_with_code(state.values["code"],
                                                             password if isinstance(password, str) else "")
            except ValidationFailed as error:
                state.fail(error)
            else:
                return _go("/login", Flash("Your password is set: sign in with it."))
        return self.renderer.page(request, "accounts/set_password.html",
                                  {"state": state, "user": user, "section": "login"}, status=422)

    # ------------------------------------------------------- account, tokens

    async def account(self, request: Request) -> Response:
        return await self._account(request)

    async def _account(self, request: Request, *, state: FormState | None = None, pw: FormState | None = None,
                       new_token: tuple[ApiToken | None, str] | None = None, status: int = 200) -> Response:
        services = services_for(request)
        carried = revealed(request, kind="token")
        if new_token is None and carried is not None:
            new_token = (None, carried["token"])
        return self.renderer.page(request, "accounts/account.html", {
            "section": "account", "tokens": await services.list_tokens(), "new_token": new_token,
            "account": await services.me(),
            "state": state or FormState(values={"label": ""}), "pw": pw or FormState(),
        }, status=status)

    async def create_token(self, request: Request) -> Response:
        services = services_for(request)
        form = await request.form()
        state = FormState(values={"label": text(form, "label")})
        try:
            record, token = await services.create_token(label=state.values["label"])
        except ValidationFailed as error:
            state.fail(error)
            return await self._account(request, state=state, status=422)
        return reveal_and_go(request, to="/account", kind="token", secret={"token": token},
                             flash=Flash(f"Token {record.label} created."))

    async def revoke_token(self, request: Request) -> Response:
        services = services_for(request)
        record = await services.revoke_token(str(request.path_params["id"]))
        form = await request.form()
        back = safe_next(text(form, "next"), "/account")
        return _go(back, Flash(f"Token {record.label} ({record.prefix}…) revoked."))

    async def change_password(self, request: Request) -> Response:
        services = services_for(request)
        form = await request.form()
        current, password, again = form.get("current"), form.get("password"), form.get("again")
        pw = FormState()
        if not isinstance(password, str) or password != again:
            pw.errors["again"] = "The two new passwords differ; nothing changed."
            pw.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                # This session stays; every other one of the user's ends.
                await services.change_password(current=current if isinstance(current, str) else "", new=password)
            except ValidationFailed as error:
                pw.errors["current" if error.field == "currentPassword" else "password"] = error.message
            except Throttled as error:
                pw.errors["current"] = error.message
        if pw.errors:
            return await self._account(request, pw=pw, status=422)
        return _go("/account", Flash("Password changed. Other sessions of yours are signed out."))

    # ------------------------------------------------------------------ users

    async def users(self, request: Request) -> Response:
        listed = await self.user_pages.fragment(request)
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
        return _go("/users", Flash(f"{name}: {ended} session(s) ended; they must sign in again."))

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
                return _go("/users", Flash(f"Account {user.name} ({user.role.value}) created."
                                           + ("" if user.password_hash else " It has no password yet: "
                                              "make a set-password link for it.")))
        return await self._users(request, state, status=422)

    async def user_link(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        code = await services.password_link(name)
        link = str(request.url_for("set_password_page").include_query_params(code=code))
        return reveal_and_go(request, to="/users", kind="link", secret={"name": name, "link": link})

    # ------------------------------------------------------------------ audit

    async def audit(self, request: Request) -> Response:
        services = services_for(request)
        query = request.query_params
        filters = {key: query.get(key, "").strip() for key in ("actor", "action", "target", "outcome")}
        offset = validation.offset(query.get("offset"))
        page = await services.audit_log(actor=filters["actor"] or None, action=filters["action"] or None,
                                        target=filters["target"] or None, outcome=filters["outcome"] or None,
                                        offset=offset, limit=AUDIT_PAGE)
        shown = urlencode({k: v for k, v in filters.items() if v})
        return self.renderer.page(request, "accounts/audit.html", {
            "section": "audit", "entries": page.items, "total": page.total, "filters": filters,
            "offset": offset, "page_size": AUDIT_PAGE, "query": shown,
            "now": datetime.now(UTC),
        })

    # ------------------------------------------------------------------ my VMs

    async def my(self, request: Request) -> Response:
        services = services_for(request)
        return self.renderer.page(request, "my/list.html", {
            "section": "my", "rows": await my_rows(services), "oob": False,
        })
