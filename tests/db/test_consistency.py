"""Two server replicas on one database (two `Services` on one connection), their reads and
writes interleaved on purpose: a write made by the other replica between one's read and its
write must never be lost, leave a stale phase, or bind one student to two machines. And the
consequences of a change survive a dropped connection.

The race is injected at the read every lab change starts from (`get_deployment`): the other
replica's change runs right after it, once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.events import EventFeed
from kubekvm.models import Deployment, DesiredState, Machine, ObservedState, Phase, Power, Template
from kubekvm.services import Services
from tests.db.test_services import a_host, report_all
from tests.support.waiting import wait_until_async


def replica(services: Services) -> Services:
    """Another server replica on the same database."""
    return Services(settings=services.settings, feed=EventFeed(), database_description="replica-2")


def race_after_first_read(services: Services, other: Callable[[], Awaitable[object]]) -> list[object]:
    """Make `other` run once, right after `services` next reads a lab. Returns a list that holds
    what `other` returned (or raised) once it ran."""
    read = services.labs.get_deployment
    ran: list[object] = []

    async def read_then_race(name: str) -> Deployment:
        lab = await read(name)
        if not ran:
            ran.append("running")
            try:
                ran[0] = await other()
            except Exception as error:  # the test looks at it
                ran[0] = error
        return lab

    services.labs.get_deployment = read_then_race  # type: ignore[method-assign]
    return ran


async def kept_machines(lab: str) -> list[Machine]:
    return await Machine.find({"deployment": lab, "retired": False,
                               "desired": {"$ne": DesiredState.ABSENT.value}}).to_list()


async def test_a_scale_racing_a_stop_makes_no_running_machine_in_a_stopped_lab(services: Services) -> None:
    other = replica(services)
    await a_host(services)
    await services.labs.create_deployment(name="race", template="tiny-linux", replicas=2)
    ran = race_after_first_read(services, lambda: other.labs.stop_deployment("race"))
    await services.labs.update_deployment("race", replicas=4)
    assert isinstance(ran[0], Deployment)
    lab = await services.labs.get_deployment("race")
    assert (lab.power, lab.replicas) == (Power.STOPPED, 4)
    desired = {m.name: m.desired for m in await kept_machines("race")}
    assert desired == {f"race-{i}": DesiredState.STOPPED for i in range(1, 5)}, desired


async def test_an_update_racing_a_delete_never_revives_the_lab(services: Services) -> None:
    other = replica(services)
    await a_host(services)
    await services.labs.create_deployment(name="doomed", template="tiny-linux", replicas=2)
    race_after_first_read(services, lambda: other.labs.delete_deployment("doomed"))
    with pytest.raises(Conflict):
        await services.labs.update_deployment("doomed", replicas=5)
    assert (await services.labs.get_deployment("doomed")).phase == Phase.DELETING
    assert await kept_machines("doomed") == [], "a machine of a lab being deleted was kept"
    await report_all(services, "doomed", ObservedState.ABSENT)
    with pytest.raises(NotFound):
        await services.labs.get_deployment("doomed")


async def test_a_scale_racing_a_roster_change_binds_the_new_roster(services: Services) -> None:
    other = replica(services)
    await a_host(services)
    await services.labs.create_deployment(name="class", template="tiny-linux", replicas=2)
    await services.rosters.set_roster("class", students=["ana", "bob"])
    ran = race_after_first_read(services, lambda: other.rosters.set_roster("class", students=["cat", "dan"]))
    await services.labs.update_deployment("class", replicas=3)
    assert isinstance(ran[0], tuple)
    lab = await services.labs.get_deployment("class")
    assert lab.roster == ["cat", "dan"] and lab.replicas == 3
    bound = sorted(m.student for m in await kept_machines("class") if m.student)
    assert bound == ["cat", "dan"], f"bound {bound}, roster {lab.roster}"


async def test_a_stale_phase_is_never_returned_or_published(services: Services,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    other = replica(services)
    await a_host(services)
    await services.labs.create_deployment(name="ph", template="tiny-linux", replicas=2)
    await report_all(services, "ph", ObservedState.RUNNING)
    assert (await services.labs.get_deployment("ph")).phase == Phase.ACTIVE
    broken = (await services.machines.list_machines(deployment="ph"))[0]
    published: list[dict[str, object]] = []
    publish = services.feed.publish

    def watch(**event: object) -> None:
        published.append(event)
        publish(**event)  # type: ignore[arg-type]

    services.feed.publish = watch  # type: ignore[method-assign]

    # This replica reads the lab (Active) and its machines (all running); right after, the
    # other replica fails a machine and writes Failed. What this replica returns and publishes
    # must not be the Active it decided from what it read.
    find = Machine.find
    ran: list[object] = []

    def find_then_race(*args: object, **kwargs: object) -> object:
        query = find(*args, **kwargs)  # type: ignore[call-overload]
        to_list = query.to_list

        async def read_then_race(*a: object, **k: object) -> object:
            result = await to_list(*a, **k)
            if not ran:
                ran.append(await other.machines.report_machine_state(
                    machine_id=str(broken.id), host="kvm1", state=ObservedState.ERROR, message="disk gone"))
            return result

        query.to_list = read_then_race
        return query

    monkeypatch.setattr(Machine, "find", find_then_race)
    returned = await services.convergence.refresh_phase("ph", always_publish=True)
    monkeypatch.undo()
    assert ran, "the race did not run"
    stored = await services.labs.get_deployment("ph")
    assert stored.phase == Phase.FAILED
    assert (returned.phase, returned.version) == (stored.phase, stored.version)
    labs = [e["document"] for e in published if e["collection"] == "deployments"]
    assert labs and all(d["phase"] == Phase.FAILED for d in labs), labs  # type: ignore[index]


async def test_concurrent_roster_and_scale_changes_bind_each_student_once(services: Services) -> None:
    replicas = [services, replica(services)]
    await a_host(services, memory=65536)
    await services.labs.create_deployment(name="busy", template="tiny-linux", replicas=4)
    people = [f"s{i}" for i in range(8)]
    chance = random.Random(12)

    async def change(i: int) -> None:
        actor = replicas[i % 2]
        if i % 3 == 2:
            await actor.labs.update_deployment("busy", replicas=chance.randint(2, 6))
        else:
            await actor.rosters.set_roster("busy", students=chance.sample(people, chance.randint(1, 6)))

    await asyncio.gather(*(change(i) for i in range(24)))
    lab = await services.labs.get_deployment("busy")
    kept = await kept_machines("busy")
    assert len(kept) == lab.replicas
    bound = Counter(m.student for m in kept if m.student)
    assert all(n == 1 for n in bound.values()), f"a student holds two machines: {bound}"
    assert set(bound) <= set(lab.roster), f"bound {sorted(bound)} not on the roster {lab.roster}"
    assert len(bound) == min(len(lab.roster), lab.replicas)


async def test_the_last_absent_report_finishes_even_if_the_agent_drops(services: Services) -> None:
    """The agent's connection drops right after it reports the last machine ABSENT (its request
    is cancelled mid-await): the lab must still go, not stay Deleting forever."""
    await a_host(services)
    await services.labs.create_deployment(name="bye", template="tiny-linux", replicas=1)
    await report_all(services, "bye", ObservedState.RUNNING)
    await services.labs.delete_deployment("bye")
    last = (await services.machines.list_machines(deployment="bye"))[0]

    publish = services.feed.publish
    report: asyncio.Task[Machine] | None = None

    def publish_then_drop(**event: object) -> None:
        publish(**event)  # type: ignore[arg-type]
        if event["collection"] == "machines" and event["operation"] == "delete" and report is not None:
            report.cancel()  # the websocket is gone the moment the machine document is

    services.feed.publish = publish_then_drop  # type: ignore[method-assign]
    report = asyncio.ensure_future(services.machines.report_machine_state(
        machine_id=str(last.id), host="kvm1", state=ObservedState.ABSENT))
    with pytest.raises(asyncio.CancelledError):
        await report
    async def lab_gone() -> bool:
        return await Deployment.find_one(Deployment.name == "bye") is None
    await wait_until_async(lab_gone, timeout=10, interval=0.01, what="the lab to leave Deleting")


async def test_template_edits_on_two_replicas_both_stay(services: Services) -> None:
    other = replica(services)
    read = services.templates.get_template
    ran: list[object] = []

    async def read_then_race(name: str) -> Template:
        template = await read(name)
        if not ran:
            ran.append(await other.templates.update_template(name, memory_mib=1024))
        return template

    services.templates.get_template = read_then_race  # type: ignore[method-assign]
    await services.templates.update_template("tiny-linux", vcpus=2)
    assert ran
    stored = await other.templates.get_template("tiny-linux")
    assert (stored.vcpus, stored.memory_mib) == (2, 1024), "one replica's edit undid the other's"


async def test_a_template_deleted_while_a_lab_is_made_from_it_leaves_no_lab_without_it(services: Services) -> None:
    other = replica(services)
    await a_host(services)
    read = services.templates.get_template
    ran: list[object] = []

    async def read_then_race(name: str) -> Template:
        template = await read(name)
        if not ran:
            ran.append(await other.templates.delete_template(name))
        return template

    services.templates.get_template = read_then_race  # type: ignore[method-assign]
    try:
        await services.labs.create_deployment(name="orphan", template="tiny-linux", replicas=1)
    except ValidationFailed as refused:
        assert refused.field == "template"
    assert ran
    made = await Deployment.find_one(Deployment.name == "orphan")
    kept = await Template.find_one(Template.name == "tiny-linux")
    assert made is None or kept is not None, "a lab was left with a deleted template"
    assert await Machine.find(Machine.deployment == "orphan").count() == (0 if made is None else 1)


async def test_a_lab_made_while_its_template_is_deleted_keeps_the_template(services: Services,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    other = replica(services)
    await a_host(services)
    delete = Template.delete
    ran: list[object] = []

    async def create_then_delete(self: Template, *args: object, **kwargs: object) -> object:
        # Between the delete's check for labs using the template and the delete itself, the
        # other replica makes a lab from it.
        if not ran:
            ran.append(await other.labs.create_deployment(name="late", template=self.name, replicas=1))
        return await delete(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Template, "delete", create_then_delete)
    with pytest.raises(Conflict):
        await services.templates.delete_template("tiny-linux")
    monkeypatch.undo()
    assert ran and await Deployment.find_one(Deployment.name == "late") is not None
    assert await Template.find_one(Template.name == "tiny-linux") is not None
