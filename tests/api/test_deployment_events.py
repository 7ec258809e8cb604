"""`deploymentEvents` as an integrator meets it: the current state first, then changes, and a
cursor to resume after a reconnect without missing a change (issue 15). Real `kubekvm serve` on
SecantusDB (change streams), the host side played through the agent's own mutations."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.test_graphql import data, ensure_tiny_template, register_host, report
from tests.support.graphql import Subscriber, websocket_session
from tests.support.processes import Server

EVENTS = """subscription($n: String, $c: String) {
  deploymentEvents(name: $n, cursor: $c) {
    kind lab cursor deployment { name title power phase running machineCount }
    machine { name observed } machines { name observed }
  }
}"""
CREATE = "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }"
RETITLE = "mutation($n: String!, $t: String!) { updateDeployment(name: $n, input: {title: $t}) { name } }"


def _event(result: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = result["deploymentEvents"]
    return event


def _kind(kind: str, **where: object) -> Any:
    def test(result: dict[str, Any]) -> bool:
        event = _event(result)
        return event["kind"] == kind and all(
            (event["deployment"] or {}).get(key) == value for key, value in where.items())
    return test


async def test_a_subscriber_gets_the_lab_as_it_is_first_then_its_changes(server: Server) -> None:
    ensure_tiny_template(server)
    register_host(server)
    data(server.graphql(CREATE, {"i": {"name": "state-first", "template": "tiny-linux", "replicas": 2}}))
    report(server, "state-first", "RUNNING", only={"state-first-1"})  # all this before anyone listens
    teacher = server.token_for("events-teacher")
    async with websocket_session(server.ws_url, server.admin_token) as session, \
            websocket_session(server.ws_url, teacher) as elsewhere:
        events = Subscriber(session, EVENTS, n="state-first", c=None)
        synced = await events.wait_for(_kind("SYNCED"), timeout=30)
        first, *_ = events.results
        state = _event(first)
        assert state["kind"] == "SNAPSHOT" and state["lab"] == "state-first"
        assert (state["deployment"]["running"], state["deployment"]["machineCount"]) == (1, 2)
        assert [(m["name"], m["observed"]) for m in state["machines"]] == [
            ("state-first-1", "RUNNING"), ("state-first-2", "PENDING")]
        assert events.results.index(synced) == 1 and _event(synced)["cursor"] == state["cursor"]
        # Changes follow, with no probing needed: SYNCED says the subscription is live.
        data(server.graphql(RETITLE, {"n": "state-first", "t": "after"}))
        changed = await events.wait_for(_kind("LAB_CHANGED", title="after"), timeout=30)
        assert _event(changed)["cursor"] not in (None, state["cursor"])
        # Someone who may see no lab is told the state is complete, and nothing of this one.
        theirs = Subscriber(elsewhere, EVENTS, n=None, c=None)
        await theirs.wait_for(_kind("SYNCED"), timeout=30)
        assert [_event(r)["kind"] for r in theirs.results] == ["SYNCED"]
        await events.close()
        await theirs.close()


async def test_a_subscriber_resumes_after_its_cursor_without_missing_a_change(server: Server) -> None:
    ensure_tiny_template(server)
    data(server.graphql(CREATE, {"i": {"name": "resumed", "template": "tiny-linux", "replicas": 1}}))
    async with websocket_session(server.ws_url, server.admin_token) as session:
        events = Subscriber(session, EVENTS, n="resumed", c=None)
        await events.wait_for(_kind("SYNCED"), timeout=30)
        data(server.graphql(RETITLE, {"n": "resumed", "t": "seen"}))
        cursor = _event(await events.wait_for(_kind("LAB_CHANGED", title="seen"), timeout=30))["cursor"]
        await events.close()
    # Disconnected: two changes it must not miss.
    data(server.graphql(RETITLE, {"n": "resumed", "t": "missed"}))
    data(server.graphql("mutation { stopDeployment(name: \"resumed\") { name } }"))
    async with websocket_session(server.ws_url, server.admin_token) as session:
        again = Subscriber(session, EVENTS, n="resumed", c=cursor)
        await again.wait_for(_kind("LAB_CHANGED", power="STOPPED"), timeout=30)
        await again.wait_for(_kind("SYNCED"), timeout=30)
        kinds = [_event(r)["kind"] for r in again.results]
        assert "SNAPSHOT" not in kinds, "the changes since the cursor are replayed, not the whole state"
        titles = [_event(r)["deployment"]["title"] for r in again.results if _event(r)["kind"] == "LAB_CHANGED"]
        assert "missed" in titles, titles
        assert cursor not in [_event(r)["cursor"] for r in again.results[:-1]], "replayed from after the cursor"
        # A cursor this server cannot resume from gives the current state again: nothing lost.
        stale = Subscriber(session, EVENTS, n="resumed", c="not-a-cursor")
        first = await stale.wait_for(lambda r: True, timeout=30)
        assert _event(first)["kind"] == "SNAPSHOT" and _event(first)["deployment"]["power"] == "STOPPED"
        await again.close()
        await stale.close()


async def test_a_shared_result_never_shows_one_caller_what_only_another_may_see(server: Server) -> None:
    """Attack: results are shared between subscribers of a change; a student asking the same
    question as the admin must still get the student's answer (the roster is hidden from them)."""
    ensure_tiny_template(server)
    data(server.graphql(CREATE, {"i": {"name": "shared-view", "template": "tiny-linux", "replicas": 1}}))
    student = server.token_for("shared-student", "student")
    data(server.graphql("mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }",
                        {"n": "shared-view", "s": ["shared-student"]}))
    question = ("subscription($n: String) { deploymentEvents(name: $n) { kind deployment { title roster } } }")
    async with websocket_session(server.ws_url, server.admin_token) as admin_session, \
            websocket_session(server.ws_url, student) as student_session:
        admins = [Subscriber(admin_session, question, n="shared-view") for _ in range(3)]
        theirs = Subscriber(student_session, question, n="shared-view")
        for subscriber in [*admins, theirs]:
            await subscriber.wait_for(lambda r: r["deploymentEvents"]["kind"] == "SYNCED", timeout=30)
        data(server.graphql(RETITLE, {"n": "shared-view", "t": "one change"}))

        def retitled(result: dict[str, Any]) -> bool:
            return (result["deploymentEvents"]["deployment"] or {}).get("title") == "one change"

        seen = [await s.wait_for(retitled, timeout=30) for s in admins]
        assert all(r == seen[0] for r in seen) and seen[0]["deploymentEvents"]["deployment"]["roster"] == [
            "shared-student"]
        assert (await theirs.wait_for(retitled, timeout=30))["deploymentEvents"]["deployment"]["roster"] == []
        for subscriber in [*admins, theirs]:
            await subscriber.close()


def test_a_question_that_reads_through_the_caller_is_told_apart() -> None:
    from graphql import parse

    from kubekvm.graphql.schema import schema
    from kubekvm.graphql.sharing import reads_through_caller

    def asks(text: str) -> bool:
        document = parse(text)
        operation, *fragments = document.definitions
        return reads_through_caller(schema._schema, operation, fragments)  # type: ignore[arg-type]

    assert not asks("subscription { deploymentEvents { kind deployment { name running } machine { name } } }")
    assert asks("subscription { deploymentEvents { deployment { roster } } }")
    assert asks("subscription { deploymentEvents { ...F } } fragment F on DeploymentEvent { deployment { machines { name } } }")
    assert not asks("subscription { deploymentEvents { ...F } } fragment F on DeploymentEvent { lab __typename }")


async def test_a_crowd_subscribing_together_while_the_lab_changes_misses_no_change(server: Server) -> None:
    """Subscriptions that start together share their first reads (`kubekvm.shared_reads`): each
    must still start from a state no older than its own subscription and miss no change after
    it, while the lab keeps changing, in order."""
    ensure_tiny_template(server)
    data(server.graphql(CREATE, {"i": {"name": "crowded", "template": "tiny-linux", "replicas": 1}}))
    data(server.graphql(RETITLE, {"n": "crowded", "t": "t-00"}))
    last = 12

    def retitle_all() -> None:
        for k in range(1, last + 1):
            data(server.graphql(RETITLE, {"n": "crowded", "t": f"t-{k:02d}"}))

    async with websocket_session(server.ws_url, server.admin_token) as session:
        crowd = [Subscriber(session, EVENTS, n="crowded", c=None) for _ in range(20)]
        changing = asyncio.ensure_future(asyncio.to_thread(retitle_all))
        for events in crowd:
            await events.wait_for(_kind("SYNCED"), timeout=60)
        await changing
        for events in crowd:
            await events.wait_for(_kind("LAB_CHANGED", title=f"t-{last:02d}"), timeout=60)
            kinds = [_event(r)["kind"] for r in events.results]
            assert kinds[:2] == ["SNAPSHOT", "SYNCED"], kinds
            titles = [_event(r)["deployment"]["title"] for r in events.results if _event(r)["deployment"]]
            # From the first state on, never an older title (a change made while the state was
            # read may come twice, so equal neighbours are allowed).
            assert titles == sorted(titles), titles
        for events in crowd:
            await events.close()
