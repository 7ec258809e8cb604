"""The live-update endpoint read as a browser's EventSource reads it: snapshot, then named
events carrying out-of-band fragments, heartbeats while idle, and nothing left behind on the
server when the client goes."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from kubekvm.events import Change
from kubekvm.models import Phase, utcnow
from kubekvm.pages.fragments import ListView
from kubekvm.streams import LabChange, LabChangeKind, _lab_change
from tests.pages.fake_host import FakeHost, data
from tests.support.processes import Server
from tests.support.waiting import wait_until

CREATE = """
mutation($input: DeploymentInput!) { createDeployment(input: $input) { name } }
"""
SCALE = """
mutation($name: String!, $replicas: Int!) {
  updateDeployment(name: $name, input: {replicas: $replicas}) { name }
}
"""
DELETE = "mutation($name: String!) { deleteDeployment(name: $name) { name } }"


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    # A short heartbeat, so the tests see one without waiting 15 s.
    return start_kubekvm(env={"KUBEKVM_LIVE_HEARTBEAT": "0.3"})


def create_lab(server: Server, name: str, replicas: int) -> None:
    data(server.graphql(CREATE, {"input": {"name": name, "template": "tiny-linux",
                                           "replicas": replicas}}))


class EventStream:
    """Server-sent events, parsed as the browser does: (event name, data) pairs, and
    ("comment", text) for comment lines."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def next(self) -> tuple[str, str]:
        event, lines = "message", []
        for line in self.lines:
            if line == "":
                if lines:
                    return event, "\n".join(lines)
                event = "message"
                continue
            if line.startswith(":"):
                return "comment", line[1:].strip()
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                lines.append(value)
        raise EOFError("the server ended the stream")

    def until(self, event: str, pattern: str = "", *, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            name, text = self.next()
            seen.append(name)
            if name == event and re.search(pattern, text, re.S):
                return text
        raise AssertionError(f"no {event!r} event matching {pattern!r}; saw {seen}")


@contextmanager
def stream(server: Server, query: str) -> Iterator[EventStream]:
    # Generous: heartbeats come every 0.3 s, but a loaded machine may stall a server for seconds.
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60.0), headers=server.admin_headers) as client, \
            client.stream("GET", f"/events?{query}") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        yield EventStream(response)


def live_subscribers(server: Server) -> int:
    page = httpx.get(f"{server.url}/server", timeout=60, headers=server.admin_headers).text
    found = re.search(r'id="live-subscribers">(\d+)<', page)
    assert found
    return int(found.group(1))


def test_lab_stream_sends_a_snapshot_then_each_change(server: Server, fake_host: FakeHost,
                                                      tiny_template: str) -> None:
    create_lab(server, "live-one", 2)
    with stream(server, "lab=live-one") as events:
        status = events.until("lab")
        assert 'id="lab-status" class="card status" hx-swap-oob="true"' in status
        assert "phase-pending" in status
        table = events.until("machines")
        assert table.count("<tr id=") == 2
        events.until("events", "created with 2 machine")

        fake_host.converge("live-one", only=["live-one-1"])
        row = events.until("machine", 'id="machine-live-one-1"')
        assert 'hx-swap-oob="true"' in row and "state-running" in row
        assert 'id="machine-live-one-2"' not in row  # only what changed

        fake_host.converge("live-one")
        events.until("lab", "phase-active")
        events.until("announce", "Active, 2 of 2 running")

        data(server.graphql(SCALE, {"name": "live-one", "replicas": 3}))
        table = events.until("machines", 'id="machine-live-one-3"')
        assert table.count("<tr id=") == 3

        data(server.graphql(SCALE, {"name": "live-one", "replicas": 1}))
        events.until("machines", "removing")
        fake_host.converge("live-one")
        events.until("machine", 'id="machine-live-one-2" hx-swap-oob="delete"')

        data(server.graphql(DELETE, {"name": "live-one"}))
        events.until("lab", "phase-deleting")
        fake_host.converge("live-one")
        gone = events.until("gone")
        assert 'id="lab-live" hx-swap-oob="true"' in gone
        with pytest.raises(EOFError):  # nothing more to follow
            while True:
                events.next()


def test_list_stream_follows_labs_in_and_out_of_a_phase(server: Server, fake_host: FakeHost,
                                                        tiny_template: str) -> None:
    with stream(server, "") as every, stream(server, "phase=Active") as active:
        every.until("labs")
        assert 'id="lab-live-two"' not in active.until("labs")

        create_lab(server, "live-two", 1)
        assert 'id="lab-live-two"' in every.until("labs", "live-two")
        fake_host.converge("live-two")
        card = every.until("lab", "phase-active")
        assert card.startswith('<article class="card lab-card" id="lab-live-two" hx-swap-oob="true"')
        assert "1/1</strong> running" in card
        assert 'id="lab-live-two"' in active.until("labs", "live-two")

        data(server.graphql(DELETE, {"name": "live-two"}))
        fake_host.converge("live-two")
        every.until("announce", "live-two was deleted")
        assert "live-two" not in active.until("labs")


def test_idle_streams_send_heartbeats(server: Server, tiny_template: str) -> None:
    with stream(server, "") as events:
        events.until("labs")
        assert events.until("comment") == "heartbeat"


def test_a_client_that_goes_leaves_no_subscription(server: Server, tiny_template: str) -> None:
    before = live_subscribers(server)
    with stream(server, "") as a, stream(server, "lab=whatever") as b:
        a.until("labs")
        b.until("gone")  # no such lab: it says so and ends
        with stream(server, "phase=Failed") as c:
            c.until("labs")
            assert live_subscribers(server) == before + 2
    # A deadline, not a duration: it passes as soon as the server notices, however long that takes.
    wait_until(lambda: live_subscribers(server) == before, timeout=120, interval=0.05,
               what="the server to drop the subscriptions of the clients that went",
               detail=lambda: f"{live_subscribers(server)} subscribers, {before} before")


def test_a_machine_read_after_its_deletion_is_still_reported_removed() -> None:
    """A change-stream reader a little behind gets no document for the updates of a machine
    deleted since (the full document is looked up at read time): the lab's subscribers must
    still hear, once, that the machine went."""
    known = {"m1": "some-lab"}
    late = Change("machines", "update", "m1", None, "c1")
    event = _lab_change(late, names={}, machine_labs=known)
    assert event is not None
    assert (event.kind, event.lab, event.machine) == (LabChangeKind.MACHINE_REMOVED, "some-lab", None)
    delete = Change("machines", "delete", "m1", None, "c2")
    assert _lab_change(delete, names={}, machine_labs=known) is None


async def test_a_lab_deleted_before_its_deletion_is_heard_is_still_announced() -> None:
    """A list page redrawn for its machines' removal reads the lab gone already; the deletion's
    own change comes in a later batch, and screen readers must still hear that the lab went."""
    from kubekvm.live import ListWatch

    lab = SimpleNamespace(name="going", phase=Phase.DELETING, phase_since=None, template="t",
                          updated_at=utcnow())
    page: list[Any] = [lab]

    class Services:
        settings = SimpleNamespace(slow_create_seconds=60)

        async def list_deployments(self, **_: Any) -> Any:
            return SimpleNamespace(items=list(page), total=len(page), counted=len(page))

        async def running_counts(self, labs: Any) -> dict[str, tuple[int, int]]:
            return {item.name: (0, 1) for item in labs}

        async def list_templates(self) -> list[Any]:
            return []

    class Fragments:
        def lab_list(self, labs: Any, **_: Any) -> str:
            return " ".join(s.lab.name for s in labs)

        def card(self, summary: Any, **_: Any) -> str:
            return summary.lab.name

        def announce(self, text: str) -> str:
            return text

    watch = ListWatch(cast(Any, Services()), cast(Any, Fragments()), ListView())
    assert await watch.snapshot() == [("labs", "going")]
    page.clear()  # the last machine's removal deleted the lab
    redrawn = await watch.update([LabChange(LabChangeKind.MACHINE_REMOVED, "going")])
    assert redrawn == [("labs", "")]
    heard = await watch.update([LabChange(LabChangeKind.LAB_DELETED, "going")])
    assert ("announce", "Lab going was deleted.") in heard
    # Once: a repeat of the change says nothing more.
    assert not [m for m in await watch.update([LabChange(LabChangeKind.LAB_DELETED, "going")])
                if m[0] == "announce"]
