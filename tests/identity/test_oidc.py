"""Sign-in with OpenID Connect, through the real browser flow: Debian's Chromium (Playwright)
goes from KubeKVM's login page to a real provider (`oidc-provider`, run by node:
`tests.support.oidc_provider`) and back, against a real `kubekvm serve` with local passwords off.

How each refusal is produced:
- a tampered `state`: the browser's own callback URL, its `state` changed before it is opened;
- a replayed code: a second browser holding a copy of the first one's pre-sign-in cookie (so its
  `state` is good) opens the callback URL the first one already used: the provider refuses the
  code it has redeemed once (`invalid_grant`);
- a wrong audience and an expired token: the provider's token endpoint is made to misbehave
  (its test hook re-signs the ID token, with its own key, after setting `aud` to another client,
  or `iat`/`exp` an hour and more in the past): the signature is good, only that claim is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.support.oidc_provider import OidcProvider, start_provider
from tests.support.processes import LOG_DIR, Server, free_port
from tests.support.sign_in_check import sign_in_check

pytestmark = pytest.mark.browser

NAME = "campus"
ACCOUNTS = {"olga": ["staff"], "pat": ["students"], "quinn": ["alumni"], "ruth": ["students"], "sol": ["students"],
            "tom": ["students"], "uma": ["students"]}


@pytest.fixture(scope="module")
def kubekvm_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def provider(kubekvm_port: int) -> Iterator[OidcProvider]:
    started = start_provider(kubekvm_url=f"http://127.0.0.1:{kubekvm_port}", name=NAME, accounts=ACCOUNTS,
                             log=LOG_DIR / f"oidc-provider-{kubekvm_port}.log")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server], provider: OidcProvider, kubekvm_port: int) -> Server:
    return start_kubekvm(port=kubekvm_port, env=provider.settings(NAME, KUBEKVM_LOCAL_PASSWORDS="0"))


@pytest.fixture
def context(browser: Any, server: Server) -> Iterator[Any]:
    made = browser.new_context(base_url=server.url)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def behaving(provider: OidcProvider) -> Iterator[None]:
    yield
    provider.misbehave("")


def _at_provider(context: Any, user: str) -> Any:
    """From KubeKVM's login page to the provider's, then its login form and its consent form
    for `user` (any password): the tab, on the consent form."""
    tab = context.new_page()
    tab.goto("/login")
    tab.get_by_role("link", name="Sign in with Campus").click()
    tab.fill('input[name="login"]', user)
    tab.fill('input[name="password"]', "anything")
    tab.click('button[type="submit"]')
    tab.get_by_role("button", name="Continue").wait_for()
    return tab


def _signed_in(context: Any, user: str) -> Any:
    """Through the provider and back: the tab where KubeKVM sent the browser."""
    tab = _at_provider(context, user)
    with tab.expect_navigation(url=lambda url: "/login/oidc/" not in url and "/interaction/" not in url):
        tab.get_by_role("button", name="Continue").click()
    return tab


def _to_callback(context: Any, server: Server, user: str) -> str:
    """Through the provider, stopping the browser on its way back: the callback URL it was sent
    to, not opened. (The provider's answer is a redirect, which Playwright's routing does not see:
    the browser's own request interception, over CDP, stops it.)"""
    tab = _at_provider(context, user)
    callback = f"{server.url}/login/oidc/{NAME}/callback"
    cdp = context.new_cdp_session(tab)
    stopped: list[str] = []

    def paused(event: dict[str, Any]) -> None:
        stopped.append(event["request"]["url"])
        cdp.send("Fetch.failRequest", {"requestId": event["requestId"], "errorReason": "Aborted"})

    cdp.on("Fetch.requestPaused", paused)
    cdp.send("Fetch.enable", {"patterns": [{"urlPattern": f"{callback}*", "requestStage": "Request"}]})
    with tab.expect_event("requestfailed", predicate=lambda request: request.url.startswith(callback)):
        tab.get_by_role("button", name="Continue").click()
    cdp.detach()
    tab.close()
    assert len(stopped) == 1, stopped
    return stopped[0]


def _open(context: Any, url: str) -> Any:
    tab = context.new_page()
    tab.goto(url)
    return tab


def _me(context: Any) -> dict[str, Any]:
    answer = context.request.post("/graphql", data={"query": "{ me { kind name role } }"})
    me: dict[str, Any] = answer.json()["data"]["me"]
    return me


def _refusal(tab: Any) -> str:
    text: str = tab.locator("#login-error").inner_text()
    return text


def _logins(server: Server, name: str) -> list[dict[str, Any]]:
    body = server.graphql("query($t: String) { auditLog(action: \"login\", target: $t) { items { actor outcome message } } }",
                          {"t": f"user:{name}"})
    assert not body.get("errors"), body
    items: list[dict[str, Any]] = body["data"]["auditLog"]["items"]  # type: ignore[index]
    return items


def _accounts(server: Server) -> dict[str, dict[str, Any]]:
    body = server.graphql("{ users { name role signsInWith hasPassword } }")
    assert not body.get("errors"), body
    return {u["name"]: u for u in body["data"]["users"]}  # type: ignore[index]


def test_the_first_sign_in_makes_the_account_with_the_mapped_role(context: Any, server: Server) -> None:
    tab = _signed_in(context, "olga")
    assert urlsplit(tab.url).path == "/"
    assert _me(context) == {"kind": "user", "name": "olga", "role": "TEACHER"}
    assert _accounts(server)["olga"] == {"name": "olga", "role": "TEACHER", "signsInWith": f"oidc:{NAME}",
                                         "hasPassword": False}
    assert _logins(server, "olga") == [{"actor": "olga", "outcome": "ok", "message": "via Campus"}]


def test_a_student_lands_on_their_machines_and_signing_out_offers_the_providers_sign_out(
        browser: Any, server: Server, provider: OidcProvider) -> None:
    context = browser.new_context(base_url=server.url)
    try:
        tab = _signed_in(context, "pat")
        assert urlsplit(tab.url).path == "/my"
        assert _me(context)["role"] == "STUDENT"
        tab.get_by_role("button", name="Sign out").click()
        tab.wait_for_url("**/signed-out?*")
        assert _me(context)["kind"] == "anonymous"
        link = urlsplit(tab.get_by_role("link", name="Sign out of Campus too").get_attribute("href"))
        assert f"{link.scheme}://{link.netloc}{link.path}" == f"{provider.issuer}/session/end"
        assert dict(parse_qsl(link.query)) == {"client_id": "kubekvm", "post_logout_redirect_uri": f"{server.url}/login"}
    finally:
        context.close()


def test_someone_in_no_mapped_group_is_refused(context: Any, server: Server) -> None:
    tab = _open(context, _to_callback(context, server, "quinn"))
    assert "puts you in no group that may use KubeKVM" in _refusal(tab)
    assert _me(context)["kind"] == "anonymous"
    assert "quinn" not in _accounts(server)
    [refused] = _logins(server, "quinn")
    assert (refused["actor"], refused["outcome"]) == ("quinn", "UNAUTHENTICATED")
    assert refused["message"].startswith("via Campus: ")


def test_a_tampered_state_is_refused(context: Any, server: Server) -> None:
    url = urlsplit(_to_callback(context, server, "ruth"))
    query = dict(parse_qsl(url.query))
    query["state"] = query["state"][:-4] + "AAAA"
    tab = _open(context, url._replace(query=urlencode(query)).geturl())
    assert "its state does not match" in _refusal(tab)
    assert _me(context)["kind"] == "anonymous"
    assert "ruth" not in _accounts(server)


def test_a_replayed_code_is_refused(browser: Any, context: Any, server: Server) -> None:
    url = _to_callback(context, server, "sol")
    before = [c for c in context.cookies() if urlsplit(server.url).hostname == c["domain"]
              and c["name"] == "kubekvm_session"]
    assert before, "no pre-sign-in cookie holding the flow's state"
    _open(context, url)
    assert _me(context)["name"] == "sol"
    thief = browser.new_context(base_url=server.url)
    try:
        thief.add_cookies(before)
        tab = _open(thief, url)
        assert "refused the sign-in (invalid_grant" in _refusal(tab)
        assert _me(thief)["kind"] == "anonymous"
    finally:
        thief.close()


@pytest.mark.parametrize(("mode", "said"), [("wrong-audience", "invalid_claim: Invalid claim: 'aud'"),
                                            ("expired", "expired_token")])
def test_an_id_token_for_another_client_or_expired_is_refused(context: Any, server: Server, provider: OidcProvider,
                                                             mode: str, said: str) -> None:
    user = "tom" if mode == "expired" else "uma"
    url = _to_callback(context, server, user)
    provider.misbehave(mode)
    tab = _open(context, url)
    assert "ID token is not valid" in _refusal(tab) and said in _refusal(tab), _refusal(tab)
    assert _me(context)["kind"] == "anonymous"
    assert user not in _accounts(server)


def test_local_passwords_switched_off_sign_nobody_in(server: Server) -> None:
    password = server.user("local-teacher", "teacher")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/login").text
        assert 'id="login-form"' not in page and 'id="sign-in-campus"' in page
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf
        answer = client.post("/login", data={"name": "local-teacher", "password": password,
                                             "csrf_token": csrf.group(1)})
        assert answer.status_code == 401
        assert "Passwords kept here are switched off" in answer.text


def test_the_settings_check_discovers_the_provider(provider: OidcProvider, server: Server) -> None:
    code, shown = sign_in_check(provider.settings(NAME))
    assert code == 0, shown
    assert f"oidc {NAME} (Campus): ok, issuer {provider.issuer}, offers end-session" in shown
    code, shown = sign_in_check(provider.settings(NAME, KUBEKVM_OIDC_CAMPUS_ISSUER=provider.issuer + "/"))
    assert code == 1 and "is not configured right here (its issuer is" in shown, shown


def test_a_disabled_account_is_refused_through_the_provider(browser: Any, context: Any, server: Server) -> None:
    """The provider vouches for olga, but an admin disabled her account here: her open session
    ends, and signing in through the provider again (a fresh browser: no provider session to
    skip its form) is refused with the reason."""
    _signed_in(context, "olga")
    assert _me(context)["name"] == "olga"
    assert not server.graphql('mutation { disableUser(name: "olga") { name } }').get("errors")
    again = browser.new_context(base_url=server.url)
    try:
        assert _me(context)["kind"] == "anonymous"
        tab = _open(again, _to_callback(again, server, "olga"))
        assert "This account is disabled" in _refusal(tab)
        assert _me(again)["kind"] == "anonymous"
        assert _logins(server, "olga")[0]["outcome"] == "UNAUTHENTICATED"
    finally:
        again.close()
        assert not server.graphql('mutation { enableUser(name: "olga") { name } }').get("errors")
