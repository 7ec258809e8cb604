"""What every page handler shares: rendering, flash messages, htmx detection, form input.

A page handler is a thin adapter: it reads the request, calls `kubekvm.services`, and renders a
Jinja2 template. Every form works without JavaScript (POST, then a 303 redirect carrying a flash
message in a short-lived cookie); when htmx sent the request (`HX-Request`), the handler answers
with an HTML fragment instead, plus an out-of-band flash message. The flash cookie holds only
the message text: it is shown escaped, so whoever can set a cookie on this origin can at most
make it say something odd.

`Renderer.guard` wraps every handler: it refuses a state-changing request of a browser session
that lacks the session's CSRF token (hidden field `csrf_token`, or the `X-CSRF-Token` header
htmx sends from the page's `hx-headers`), sends the anonymous to the sign-in page, and turns the
domain errors a handler leaves into pages or flashes (a database fault into a 503 page).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from kubekvm import __version__, validation
from kubekvm.access.actors import ActorKind
from kubekvm.access.roles import require_user
from kubekvm.auth import CSRF_FIELD, CSRF_HEADER, CSRF_KEY, actor_of, csrf_token
from kubekvm.config import Settings
from kubekvm.credentials import same
from kubekvm.database import unavailable
from kubekvm.errors import (
    Conflict,
    Forbidden,
    KubeKVMError,
    NotFound,
    Throttled,
    TooManyConsoles,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
    each_field,
)
from kubekvm.faults import quiet
from kubekvm.models import Role

FLASH_COOKIE = "kubekvm_flash"
REVEAL_COOKIE = "kubekvm_reveal"  # `kubekvm.pages.reveal`
Handler = Callable[[Request], Awaitable[Response]]

# Domain errors whose rendered message htmx should swap in like a success (htmx leaves 4xx/5xx
# responses unswapped by default); anything else is a bug and stays an error.
_STATUS = {ValidationFailed: 422, NotFound: 404, Conflict: 409, Unavailable: 503, Unauthenticated: 401,
           Forbidden: 403, Throttled: 429, TooManyConsoles: 429}
CSRF_REFUSED = ("This request was refused: it did not carry this session's security token (CSRF), so it "
                "may not have come from a KubeKVM page. Reload the page and try again.")


@dataclass(frozen=True)
class Flash:
    text: str
    level: Literal["ok", "error"] = "ok"


@dataclass
class FormState:
    """What the user typed and what is wrong with it, to render a form again."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def fail(self, error: ValidationFailed) -> None:
        """Note every field `error` is about (FieldErrors: several), the first message per field."""
        for each in each_field(error):
            self.errors.setdefault(each.field, each.message)

    def check(self, rule: Callable[[], object]) -> None:
        """Run a pure rule for its refusal only, so a form that cannot be sent on (two passwords
        that differ) still shows what else is wrong with it, all at once."""
        try:
            rule()
        except ValidationFailed as error:
            self.fail(error)

    @property
    def first_error(self) -> str | None:
        return next(iter(self.errors), None)


def is_htmx(request: Request) -> bool:
    # A history restore asks for the whole page, like a browser without htmx.
    return (request.headers.get("HX-Request") == "true"
            and request.headers.get("HX-History-Restore-Request") != "true")


def hx_target(request: Request) -> str:
    return request.headers.get("HX-Target") or ""


def text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def raw(form: FormData, key: str) -> str:
    """A field exactly as sent (a number field: `validation.whole_number` judges all of it)."""
    value = form.get(key)
    return value if isinstance(value, str) else ""


def storable_form(form: FormData) -> None:
    """ValidationFailed for a form holding a lone surrogate in any field (a multipart body can
    declare a charset such as `unicode_escape` that makes one): it could be neither stored nor
    looked up, nor even hashed as a password."""
    for key, value in form.multi_items():
        if isinstance(value, str):
            validation.storable(value, field=key)


def safe_next(raw: str, default: str) -> str:
    """Where a no-JS form returns to: a path on this server, never another site."""
    if raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return default


def status_of(error: KubeKVMError) -> int:
    for kind, status in _STATUS.items():
        if isinstance(error, kind):
            return status
    return 500


def _encode_flash(flash: Flash) -> str:
    raw = json.dumps({"text": flash.text[:500], "level": flash.level}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_flash(value: str) -> Flash | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        level: Literal["ok", "error"] = "error" if data.get("level") == "error" else "ok"
        return Flash(text=str(data["text"])[:500], level=level)
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        return None


def set_flash(response: Response, flash: Flash) -> None:
    response.set_cookie(FLASH_COOKIE, _encode_flash(flash), max_age=60, path="/",
                        httponly=True, samesite="lax")


def ago(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def clock(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def mib(value: int) -> str:
    if value >= 1024 and value % 1024 == 0:
        return f"{value // 1024} GiB"
    return f"{value} MiB"


def redirect(to: str, flash: Flash | None = None) -> Response:
    """A 303 to `to` (Post/Redirect/Get), with the flash the page there shows."""
    response = RedirectResponse(to, status_code=303)
    if flash is not None:
        set_flash(response, flash)
    return response


class Renderer:
    """Jinja2 templates for whole pages and for the fragments htmx and live updates swap in."""

    def __init__(self, settings: Settings) -> None:
        self.static_dir = settings.static_dir
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(settings.templates_dir),
            autoescape=True,
            undefined=jinja2.StrictUndefined,  # a misspelt name fails a test, not a page silently
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Fragments rendered for htmx and live updates have no page context: no hidden CSRF
        # field there (htmx sends the header from the page's hx-headers instead).
        environment.globals.update(static=self.static, version=__version__, csrf_token="", me=None)
        environment.filters.update(ago=ago, clock=clock, mib=mib)
        self.templates = Jinja2Templates(env=environment)
        self.environment = environment
        self._fingerprints: dict[str, str] = {}

    def static(self, path: str) -> str:
        """A static file's URL with a content fingerprint, so browsers may cache it for good."""
        fingerprint = self._fingerprints.get(path)
        if fingerprint is None:
            file = Path(self.static_dir, path)
            content = file.read_bytes() if file.is_file() else b""
            fingerprint = hashlib.sha256(content).hexdigest()[:10]
            self._fingerprints[path] = fingerprint
        return f"/static/{path}?v={fingerprint}"

    def fragment(self, template: str, /, **context: Any) -> str:
        return self.environment.get_template(template).render(context)

    def page(self, request: Request, name: str, context: Mapping[str, Any] | None = None, *,
             status: int = 200) -> Response:
        cookie = request.cookies.get(FLASH_COOKIE)
        flash = _decode_flash(cookie) if cookie else None
        response = self.templates.TemplateResponse(
            request, name, {"flash": flash, "section": "", "me": actor_of(request),
                            "csrf_token": csrf_token(request), **(context or {})}, status_code=status,
        )
        if cookie is not None:  # shown once
            response.delete_cookie(FLASH_COOKIE, path="/")
        if REVEAL_COOKIE in request.cookies:  # a secret carried here is shown once, too (`reveal`)
            response.delete_cookie(REVEAL_COOKIE, path=request.url.path)
        response.headers["Cache-Control"] = "no-store"
        return response

    def flash_oob(self, flash: Flash) -> str:
        return self.fragment("_flash.html", flash=flash, oob=True)

    def htmx(self, html: str, *, flash: Flash | None = None, status: int = 200,
             reswap: str | None = None) -> HTMLResponse:
        """A fragment for htmx, with the flash message swapped into its region out of band."""
        body = html + (self.flash_oob(flash) if flash else "")
        response = HTMLResponse(body, status_code=status)
        if reswap:
            response.headers["HX-Reswap"] = reswap
        return response

    def done(self, request: Request, *, to: str, flash: Flash) -> Response:
        """Success of a form: a redirect (303) without JS; with htmx, the same navigation made
        by htmx (HX-Location), which keeps the page alive instead of reloading it."""
        response: Response
        if is_htmx(request):
            response = Response(status_code=200, headers={"HX-Location": json.dumps({"path": to})})
        else:
            response = RedirectResponse(to, status_code=303)
        set_flash(response, flash)
        return response

    def error(self, request: Request, error: KubeKVMError, *, back: str = "/") -> Response:
        """A refused request: an error flash for htmx, else the page it came from with the
        message (or an error page when it did not come from one of ours)."""
        status = status_of(error)
        flash = Flash(error.message, "error")
        if is_htmx(request):
            return self.htmx("", flash=flash, status=status, reswap="none")
        if request.method == "POST":
            return redirect(back, flash)
        return self.page(request, "error.html", {"error": error, "status": status}, status=status)

    def refuse_csrf(self, request: Request) -> Response:
        if is_htmx(request):
            return self.htmx("", flash=Flash(CSRF_REFUSED, "error"), status=403, reswap="none")
        return self.page(request, "error.html", {"error": Forbidden(CSRF_REFUSED), "status": 403}, status=403)

    def sign_in_first(self, request: Request) -> Response:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        to = f"/login?next={quote(back if request.method == 'GET' else '/')}"
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": to})
        return RedirectResponse(to, status_code=303)

    def guard(self, handler: Handler, *, public: bool = False, roles: tuple[Role, ...] = ()) -> Handler:
        """CSRF for state-changing requests; the sign-in page for the anonymous (unless the
        page is `public`); a refusal for roles the page is not for; domain errors a handler
        does not handle itself into pages or flashes."""

        async def guarded(request: Request) -> Response:
            if request.method not in ("GET", "HEAD"):
                try:
                    storable_form(await request.form())
                except ValidationFailed as error:
                    return self.page(request, "error.html", {"error": error, "status": 422}, status=422)
                if not await csrf_ok(request):
                    return self.refuse_csrf(request)
            actor = actor_of(request)
            if not public and actor.kind == ActorKind.ANONYMOUS:
                return self.sign_in_first(request)
            try:
                if roles and not public:
                    require_user(actor, *roles)
                return await handler(request)
            except Unauthenticated:
                return self.sign_in_first(request)
            except KubeKVMError as error:
                referer = urlsplit(request.headers.get("Referer", ""))
                return self.error(request, error, back=safe_next(referer.path, "/"))
            except Exception as error:
                fault = unavailable(error)
                if fault is None:
                    raise
                quiet.fault(f"{request.method} {request.url.path}", error)
                if is_htmx(request):
                    return self.error(request, fault)
                # The page itself, not a redirect to another that would fail the same way.
                return self.page(request, "error.html", {"error": fault, "status": 503}, status=503)

        guarded.__name__ = getattr(handler, "__name__", "page")
        guarded.__doc__ = handler.__doc__
        return guarded


async def csrf_ok(request: Request) -> bool:
    """A state-changing request carries this session's CSRF token, or needs none (a bearer
    token: browsers never send one by themselves)."""
    if actor_of(request).via == "token":
        return True
    expected = request.session.get(CSRF_KEY)
    supplied = request.headers.get(CSRF_HEADER)
    if not supplied:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        supplied = field if isinstance(field, str) else None
    return isinstance(expected, str) and bool(expected) and bool(supplied) and same(expected, supplied or "")
