"""Attacks on sessions (issue 11, item 6): a session must end on the server when it should.

Each test is the request an attacker (or a lost laptop) makes with a session cookie that ought
to be dead, against a real server: after sign-out, after the owner changed their password, after
an admin ended the user's sessions, after the session sat idle (when a session lapses is
tested in-process with the sessions' clock injected, not by waiting). Each asserts the refusal
and that nothing was written with the dead cookie.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from gql import Client
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from kubekvm.config import Settings
from kubekvm.database import connect
from kubekvm.models import Role, User
from kubekvm.services import sessions
from kubekvm.services.accounts import Accounts
from tests.security.signin import browser, csrf_of, database, session_count, signed_in, try_sign_in, user_doc, who
from tests.support.graphql import Subscriber
from tests.support.processes import Server
from tests.support.waiting import wait_until_async

CREATE_TOKEN = 'mutation { createApiToken(label: "stolen") { token } }'


def _tokens_of(server: Server, name: str) -> list[str]:
    body = server.graphql("{ apiTokens(everyone: true) { owner label } }")
    return [t["label"] for t in body["data"]["apiTokens"] if t["owner"] == name]  # type: ignore[index]


def _refused_everywhere(server: Server, cookie: str, name: str) -> None:
    """The copied cookie is anonymous now: pages send it to sign in, GraphQL knows no one, and
    a change made with it is refused without writing anything."""
    thief = httpx.Client(base_url=server.url, cookies={"kubekvm_session": cookie}, timeout=30)
    with thief:
        page = thief.get("/account")
        assert page.status_code == 303 and page.headers["location"].startswith("/login"), page.status_code
        assert who(thief) is None
        tokens_before = _tokens_of(server, name)
        made = thief.post("/graphql", json={"query": CREATE_TOKEN}).json()
        assert made["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert _tokens_of(server, name) == tokens_before


def test_a_copied_cookie_is_refused_after_sign_out(server: Server) -> None:
    password = server.user("sess-out", "teacher")
    owner = signed_in(server, "sess-out", password)
    cookie = owner.cookies["kubekvm_session"]
    assert who(owner, cookie) == "sess-out"  # the copy works while the session lives
    assert session_count(server, "sess-out") == 1
    answer = owner.post("/logout")
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert session_count(server, "sess-out") == 0
    _refused_everywhere(server, cookie, "sess-out")


def test_a_password_change_asks_for_the_current_one_and_ends_the_other_sessions(server: Server) -> None:
    password = server.user("sess-pw", "teacher")
    laptop = signed_in(server, "sess-pw", password)
    lab_pc = signed_in(server, "sess-pw", password, address="10.20.0.5")
    lab_cookie = lab_pc.cookies["kubekvm_session"]
    before = user_doc(server, "sess-pw")["password_hash"]
    # Someone at the lab PC (still signed in) tries to lock the owner out: without the current
    # password, through the page and through GraphQL, nothing changes.
    wrong = lab_pc.post("/account/password", data={"current": "not-the-password", "password": "taken-over-1",
                                                   "again": "taken-over-1"})
    assert wrong.status_code == 422
    assert 'id="current-error"' in wrong.text and "not right" in wrong.text
    refused = lab_pc.post("/graphql", json={"query": 'mutation { changePassword(currentPassword: "guess-guess", '
                                                     'newPassword: "taken-over-2") { name } }'}).json()
    assert refused["errors"][0]["extensions"]["code"] == "VALIDATION_FAILED"
    assert refused["errors"][0]["extensions"]["field"] == "currentPassword"
    # setUserPassword on oneself is refused too (it would skip the current password).
    itself = lab_pc.post("/graphql", json={"query": 'mutation { setUserPassword(name: "sess-pw", '
                                                    'password: "taken-over-3") { name } }'}).json()
    assert itself["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert user_doc(server, "sess-pw")["password_hash"] == before
    assert session_count(server, "sess-pw") == 2
    # The owner changes it, on the laptop: the laptop stays signed in, the lab PC's session ends.
    changed = laptop.post("/account/password", data={"current": password, "password": "a-new-password-1",
                                                     "again": "a-new-password-1"})
    assert changed.status_code == 303
    assert "Password changed" in laptop.get("/account").text
    server.passwords["sess-pw"] = "a-new-password-1"
    assert user_doc(server, "sess-pw")["password_hash"] != before
    assert who(laptop) == "sess-pw"
    assert session_count(server, "sess-pw") == 1
    _refused_everywhere(server, lab_cookie, "sess-pw")


def test_an_admin_ends_all_of_a_users_sessions(server: Server) -> None:
    password = server.user("sess-all", "student")
    cookies = [signed_in(server, "sess-all", password, address=f"10.21.0.{i}").cookies["kubekvm_session"]
               for i in (1, 2)]
    teacher = signed_in(server, "sess-teacher", server.user("sess-teacher", "teacher"))
    # A teacher may not end someone's sessions (nor may the student, through GraphQL).
    refused = teacher.post("/graphql", json={"query": 'mutation { endUserSessions(name: "sess-all") }'}).json()
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    page = teacher.post("/users/sess-all/sessions/end", headers={"HX-Request": "true"})
    assert page.status_code == 403
    assert session_count(server, "sess-all") == 2
    # An admin, with the button on the users page.
    admin = signed_in(server, "sess-admin", server.user("sess-admin", "admin"))
    users = admin.get("/users").text
    assert 'action="/users/sess-all/sessions/end"' in users
    ended = admin.post("/users/sess-all/sessions/end")
    assert ended.status_code == 303
    assert "2 session(s) ended" in admin.get("/users").text
    assert session_count(server, "sess-all") == 0
    for cookie in cookies:
        _refused_everywhere(server, cookie, "sess-all")
    audit = server.graphql('{ auditLog(action: "endUserSessions") { items { actor target outcome } } }')
    outcomes = {(e["actor"], e["outcome"]) for e in audit["data"]["auditLog"]["items"]}  # type: ignore[index]
    assert ("sess-admin", "ok") in outcomes and ("sess-teacher", "FORBIDDEN") in outcomes
    # And over GraphQL (an admin's token): the number of sessions ended.
    signed_in(server, "sess-all", password)
    body = server.graphql('mutation { endUserSessions(name: "sess-all") }')
    assert body["data"] == {"endUserSessions": 1}
    assert session_count(server, "sess-all") == 0


def _live_sessions(server: Server, name: str) -> int:
    client, db = database(server)
    with client:
        return int(db["sessions"].count_documents({"user": name, "expires_at": {"$gt": datetime.now(UTC)}}))


async def test_an_idle_session_lapses_and_a_used_one_does_not(secantus_uri: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule, on a real database with the sessions' clock injected (with a real idle timeout
    a loaded machine's slow request let the *used* session lapse too): use moves a session's
    idle expiry forward, a session left alone lapses when its timeout has passed."""
    connection = await connect(secantus_uri, database=f"t{uuid.uuid4().hex[:12]}")
    clock = [datetime(2026, 11, 30, 9, 0, tzinfo=UTC)]
    monkeypatch.setattr(sessions, "utcnow", lambda: clock[0])
    try:
        accounts = Accounts(settings=Settings(session_idle_seconds=6.0))
        user = User(name="sess-idle", role=Role.TEACHER, password_hash="$argon2id$stands-for-a-password")
        await user.insert()
        used, _ = await accounts.start_session(user, address="203.0.113.1")
        idle, _ = await accounts.start_session(user, address="203.0.113.1")
        started = clock[0]
        # The used session is used every 2 s for three times the idle timeout ...
        for second in range(2, 20, 2):
            clock[0] = started + timedelta(seconds=second)
            assert await accounts.resume_session(used) is not None, f"the used session lapsed at {second} s"
        # ... and the one left alone has lapsed, on the read and on the count of live sessions.
        assert await accounts.resume_session(idle) is None
        assert await accounts.count_sessions(["sess-idle"]) == {"sess-idle": 1}
        assert await accounts.resume_session(used) is not None
    finally:
        await connection.client.drop_database(connection.database.name)
        await connection.close()


def test_a_lapsed_session_is_refused_everywhere_and_the_others_go_on(server: Server) -> None:
    """Against the server: a session whose idle expiry has passed (set so in the database, as
    its lapse leaves it) is anonymous on every route; the user's other session goes on."""
    password = server.user("sess-lapse", "teacher")
    used = signed_in(server, "sess-lapse", password)
    idle = signed_in(server, "sess-lapse", password)
    idle_cookie = idle.cookies["kubekvm_session"]
    client, db = database(server)
    with client:
        # The later of the two sign-ins made the idle session.
        newest = db["sessions"].find_one({"user": "sess-lapse"}, sort=[("_id", -1)])
        assert newest is not None
        lapsed = db["sessions"].update_one(
            {"_id": newest["_id"]}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    assert lapsed.modified_count == 1
    assert _live_sessions(server, "sess-lapse") == 1
    _refused_everywhere(server, idle_cookie, "sess-lapse")
    assert who(used) == "sess-lapse"


def test_a_live_stream_stops_once_its_session_ends(start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm(env={"KUBEKVM_LIVE_HEARTBEAT": "0.5"})
    try:
        password = server.user("sess-live", "teacher")
        owner = signed_in(server, "sess-live", password)
        cookie = owner.cookies["kubekvm_session"]
        with httpx.Client(base_url=server.url, cookies={"kubekvm_session": cookie}, timeout=30) as watcher, \
                watcher.stream("GET", "/events") as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            assert owner.post("/logout").status_code == 303
            # The stream ends (at its next check, a heartbeat) instead of serving a dead session.
            heartbeats = 0
            for line in lines:
                heartbeats += line.startswith(": heartbeat")
                assert heartbeats < 5, "the stream went on after its session ended"
        reopened = httpx.get(f"{server.url}/events", cookies={"kubekvm_session": cookie}, timeout=10)
        assert reopened.status_code == 401
    finally:
        server.stop()


def test_sign_in_rotates_the_session_and_a_planted_cookie_gives_nothing(server: Server) -> None:
    password = server.user("sess-fix", "teacher")
    client = browser(server)
    client.get("/login")
    planted = client.cookies["kubekvm_session"]  # what an attacker could have set beforehand
    assert try_sign_in(client, "sess-fix", password).status_code == 303
    assert client.cookies["kubekvm_session"] != planted
    assert who(client, planted) is None
    assert csrf_of(client)


async def test_a_graphql_subscription_stops_once_its_session_ends(server: Server) -> None:
    password = server.user("sess-sub", "teacher")
    owner = signed_in(server, "sess-sub", password)
    token = server.token_for("sess-sub")
    server.graphql("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                   {"i": {"name": "sess-tpl", "image": "x.qcow2", "memoryMib": 128, "diskGib": 1}})
    made = server.graphql('mutation { createDeployment(input: {name: "sess-lab", template: "sess-tpl", '
                          'replicas: 1}) { name } }', token=token)
    assert not made.get("errors"), made
    counter = iter(range(10_000))

    def poke() -> None:
        server.graphql(f'mutation {{ updateDeployment(name: "sess-lab", input: {{title: "t{next(counter)}"}}) '
                       "{ name } }", token=token)

    cookie = owner.cookies["kubekvm_session"]
    transport = WebsocketsTransport(url=server.ws_url, headers={"Cookie": f"kubekvm_session={cookie}"},
                                    subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        subscriber = Subscriber(session, 'subscription { deploymentEvents(name: "sess-lab") { kind lab } }')
        await subscriber.until_live(poke, lambda r: r["deploymentEvents"]["lab"] == "sess-lab")
        assert (await asyncio.to_thread(owner.post, "/logout")).status_code == 303
        # Changes go on; the subscription ends with UNAUTHENTICATED at its next check.
        ended: list[BaseException] = []

        async def stopped() -> bool:
            await asyncio.to_thread(poke)
            try:
                await subscriber.wait_for(lambda r: False, timeout=0.3)
            except TransportQueryError as error:
                ended.append(error)
                return True
            except (TimeoutError, AssertionError):
                return False
            return False

        await wait_until_async(stopped, timeout=20, what="the subscription to end after sign-out")
        assert isinstance(ended[0], TransportQueryError)
        assert ended[0].errors and ended[0].errors[0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_signing_out_through_one_replica_ends_the_session_on_another(
        server: Server, start_kubekvm: Callable[..., Server]) -> None:
    other = start_kubekvm(database_name=server.database_name)
    try:
        password = server.user("sess-two", "teacher")
        owner = signed_in(server, "sess-two", password)
        cookie = owner.cookies["kubekvm_session"]
        with httpx.Client(base_url=other.url, cookies={"kubekvm_session": cookie}, timeout=30) as elsewhere:
            assert who(elsewhere) == "sess-two"  # one session, whichever replica is asked
            elsewhere.headers["X-CSRF-Token"] = csrf_of(elsewhere)
            assert elsewhere.post("/logout").status_code == 303
        assert who(owner, cookie) is None
        _refused_everywhere(server, cookie, "sess-two")
        _refused_everywhere(other, cookie, "sess-two")
    finally:
        other.stop()
