"""A property-based fuzz of every HTML form's fields against a real server and database.

The forms are found as a browser finds them: the pages an admin sees are fetched (following
the site's own links from the start pages) and every `<form>` in them is read — its action,
method and fields. The set-password and first-admin forms, which only a one-time link shows,
and the sign-in form are added by hand. Hypothesis then posts each form with hostile values in its fields (NUL and
other control characters, bidirectional overrides, odd digits, huge numbers, very long text),
with the session's valid CSRF token, as a plain browser and as htmx; no answer may be a 5xx.
Forms that delete or sign out go last, so the others still find what they act on.

Derandomized for CI. `make test` posts each form at least 3 times (a quarter of the full
count, `FUZZ_SMOKE`); `make fuzz` the full 8 (KUBEKVM_FUZZ_SCALE=1), and KUBEKVM_FUZZ_RANDOM=1
explores new examples.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from kubekvm.config import Settings
from kubekvm.pages import routes
from tests.images import hostile
from tests.security.input_support import FUZZ_SMOKE, HOSTILE_NUMBERS, TEMPLATE, admin_session, post_graphql
from tests.support.processes import Server

LAB = "fuzz-form-lab"
STUDENT = "fuzz-student"
SCALE = float(os.environ.get("KUBEKVM_FUZZ_SCALE", FUZZ_SMOKE))
START_PAGES = ["/", "/labs", "/new-lab", "/templates", "/templates/new", "/hosts", "/users", "/account", "/audit",
               "/server", "/my", "/images", "/templates/sec-tiny/versions", f"/labs/{LAB}/version", f"/labs/{LAB}", f"/labs/{LAB}/edit", f"/labs/{LAB}/delete",
               "/templates/sec-tiny/edit"]
NOT_PAGES = ("/events", "/static/", "/graphql", "/consoles/", "/logout")
# POST routes that are no form: the console page's script asks for a ticket (JSON, no fields).
# The roster-from-a-group form is on a lab's page only where a directory is configured: its
# hostile values are tests/identity/test_ldap.py's, against a real slapd.
NOT_FORMS = ("/machines/{name}/console/ticket", "/labs/{name}/roster/group")
HOSTILE_TEXT = ["", " ", "\x00", "a\x00b", "\x1b[2J", "\u202eevil", "\ud7ff", "\uffff", "\r\n", "\t", "😀" * 10,
                "x" * 10_000, "../../etc/passwd", "//evil.example/", "\\\\evil", "<script>alert(1)</script>",
                "' OR 1=1 --", '{"$gt": ""}', "$where", "null", "true", "-1", "0", "NaN", "Infinity",
                *HOSTILE_NUMBERS]


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, list[str]] = field(default_factory=dict)  # name -> the values the page offers

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return self.method, self.action, tuple(sorted(self.fields))

    @property
    def last(self) -> bool:
        """Forms that remove what others act on, or end the session, go last."""
        return bool(re.search(r"/(delete|revoke|logout|sessions/end)$", self.action))


class Forms(HTMLParser):
    """The forms of one page and the site links in it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.links: set[str] = set()
        self._form: Form | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "a" and attributes.get("href", "").startswith("/"):
            self.links.add(attributes["href"].split("#")[0])
        elif tag == "form":
            self._form = Form(action=attributes.get("action", ""), method=attributes.get("method", "get").lower())
            self.forms.append(self._form)
        elif self._form is not None and tag in ("input", "textarea", "select", "button") and attributes.get("name"):
            values = self._form.fields.setdefault(attributes["name"], [])
            if "value" in attributes:
                values.append(attributes["value"])
            if tag == "select":
                self._select = attributes["name"]
        elif tag == "option" and self._form is not None and self._select:
            self._form.fields[self._select].append(attributes.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


def crawl(client: httpx.Client, *, limit: int = 60) -> list[Form]:
    seen: set[str] = set()
    queue = list(START_PAGES)
    forms: dict[tuple[str, str, tuple[str, ...]], Form] = {}
    while queue and len(seen) < limit:
        path = queue.pop(0)
        if path in seen or path.startswith(NOT_PAGES):
            continue
        seen.add(path)
        answer = client.get(path)
        assert answer.status_code < 500, (path, answer.status_code)
        if "text/html" not in answer.headers.get("content-type", ""):
            continue
        parser = Forms()
        parser.feed(answer.text)
        for form in parser.forms:
            form.action = form.action or path
            forms.setdefault(form.key, form)
        queue.extend(sorted(parser.links - seen))
    # Shown only through a one-time link, or only to the signed-out: the fields are the templates'.
    for action, names in (("/set-password", ("code", "password", "again")),
                          ("/setup", ("code", "name", "password", "again")), ("/login", ("name", "password", "next"))):
        extra = Form(action=action, method="post", fields={name: [] for name in names})
        forms.setdefault(extra.key, extra)
    return sorted(forms.values(), key=lambda f: (f.last, f.action))


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    """A server of its own, not the shared one: the fuzz's hostile writes and failed sign-ins
    must reach no other module."""
    return start_kubekvm()


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    assert not post_graphql(server, "mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                            {"i": TEMPLATE}).get("errors")
    assert not post_graphql(server, f'mutation {{ createDeployment(input: {{name: "{LAB}", template: "sec-tiny", '
                                    'replicas: 2, power: STOPPED}) { name } }').get("errors")
    assert not post_graphql(server, f'mutation {{ setRoster(name: "{LAB}", students: ["{STUDENT}"]) '
                                    "{ unbound } }").get("errors")
    # An hours quota, so the lab's page shows each student's grant-more form.
    assert not post_graphql(server, f'mutation {{ setUsagePolicy(name: "{LAB}", input: {{quotaHours: 10}}) '
                                    "{ quotaHours } }").get("errors")
    # A version of sec-tiny (an image of the store), so its versions page shows a retire form.
    image = hostile.qcow2(Path(server.env["KUBEKVM_IMAGE_STORE"]).parent / f"fuzz-{server.database_name}.qcow2")
    imported = httpx.post(f"{server.url}/images", content=image.read_bytes(), timeout=60,
                          headers={**server.admin_headers, "X-Image-Name": "fuzz.qcow2"})
    image.unlink()
    assert imported.status_code == 200, imported.text
    assert not post_graphql(server, 'mutation($d: String!) { publishTemplateVersion(name: "sec-tiny", digest: $d) '
                                    "{ name } }", {"d": imported.json()["digest"]}).get("errors")
    client = admin_session(server, "fuzz-admin")
    # Post/Redirect/Get: the token is shown on /account after the redirect.
    assert client.post("/account/tokens", data={"label": "fuzzed"}).status_code == 303
    yield client
    client.close()


def values_for(form: Form) -> st.SearchStrategy[dict[str, str]]:
    """Each field: what the page offers, or something hostile."""
    def one(name: str, offered: list[str]) -> st.SearchStrategy[str]:
        if name == "csrf_token":
            return st.sampled_from(offered or [""])
        hostile = st.sampled_from(HOSTILE_TEXT) | st.text(max_size=50) | st.integers().map(str)
        return (st.sampled_from(offered) | hostile) if offered else hostile
    return st.fixed_dictionaries({name: one(name, offered) for name, offered in form.fields.items()})


def fuzz_form(client: httpx.Client, form: Form) -> None:
    """Post `form` with hostile values, as a plain browser and as htmx: never a 5xx."""
    @settings(max_examples=max(int(8 * SCALE), 3), deadline=None, database=None,
              derandomize=os.environ.get("KUBEKVM_FUZZ_RANDOM") != "1", suppress_health_check=list(HealthCheck))
    @given(values=values_for(form), htmx=st.booleans())
    def post(values: dict[str, str], htmx: bool) -> None:
        headers = {"HX-Request": "true"} if htmx else {}
        if form.method == "get":
            answer = client.get(form.action, params=values, headers=headers)
        else:
            answer = client.post(form.action, data=values, headers=headers)
        assert answer.status_code < 500, (form.action, values, answer.status_code, answer.text[:500])

    post()


def test_every_form_survives_hostile_values(server: Server, admin: httpx.Client) -> None:
    # A disabled account, so the Users page offers its Enable form too.
    server.user("fz-off", "student")
    assert not server.graphql('mutation { disableUser(name: "fz-off") { name } }').get("errors")
    forms = crawl(admin)
    actions = {form.action for form in forms}
    # The crawl found the forms there are (a broken crawl must not pass by fuzzing nothing).
    for expected in ("/labs", f"/labs/{LAB}/edit", f"/labs/{LAB}/roster", "/templates", "/templates/sec-tiny/edit",
                     "/users", "/account/tokens", "/account/password", "/hosts/tokens", "/login", "/audit",
                     f"/labs/{LAB}/delete", "/templates/sec-tiny/delete"):
        assert expected in actions, (expected, sorted(actions))
    # ... and a form for every POST route of the route table.
    for route in routes(settings=Settings()):
        if isinstance(route, Route) and "POST" in (route.methods or ()) and route.path not in NOT_FORMS:
            # (An action may carry a query: the image upload's CSRF token, read before its body.)
            assert any(route.path_regex.match(action.split("?")[0]) for action in actions), (
                route.path, sorted(actions))
    failures: list[str] = []
    for form in forms:
        if form.action == "/logout":
            continue  # it would end the session the other forms need; a bare POST of it is below
        try:
            fuzz_form(admin, form)
        except AssertionError as failure:
            failures.append(f"{form.method.upper()} {form.action}: {failure}")
    assert not failures, "\n".join(failures)
    assert admin.post("/logout", data={"next": "\x00"}).status_code < 500


def test_forms_refuse_a_foreign_or_missing_csrf_token(server: Server, admin: httpx.Client) -> None:
    """The fuzz sends the session's token; without it every form is refused before its fields
    are read (403), whatever they hold."""
    without = httpx.Client(base_url=server.url, cookies=admin.cookies, timeout=30)
    for action in ("/labs", "/templates", "/users", "/account/tokens"):
        answer = without.post(action, data={"name": "\x00", "title": "\u202e", "csrf_token": "forged"})
        assert answer.status_code == 403, (action, answer.status_code)
    without.close()


