"""A host's liveness, through the service layer: ready while its agent beats within the timeout,
not ready (its machines' host "not reporting", nothing placed on it) once the timeout has
passed, ready again at its next heartbeat, which places what waited; and a heartbeat is one
write that wakes no subscriber of the event feed (no subscriber shows a host)."""

from __future__ import annotations

from datetime import timedelta

from kubekvm.models import Host, utcnow
from kubekvm.services import Services

TIMEOUT = 30  # the services fixture's host_timeout_seconds


async def age(name: str, seconds: float) -> None:
    """As if the host's agent had last beaten `seconds` ago (no waiting in a test)."""
    await Host.get_pymongo_collection().update_one(
        {"name": name}, {"$set": {"last_heartbeat": utcnow() - timedelta(seconds=seconds)}})


async def test_a_host_goes_quiet_after_the_timeout_and_comes_back_on_its_heartbeat(services: Services) -> None:
    await services.hosts.register_host(name="kvm1", vcpus=4, memory_mib=8192, images=["tiny-linux.qcow2"],
                                       domain_type="test")
    await age("kvm1", TIMEOUT - 5)
    assert (await services.hosts.host_status("kvm1")).ready
    assert await services.hosts.hosts_reporting(["kvm1"]) == {"kvm1": True}

    await age("kvm1", TIMEOUT + 1)
    quiet = await services.hosts.host_status("kvm1")
    assert not quiet.ready and quiet.heartbeat_age_seconds > TIMEOUT
    assert await services.hosts.hosts_reporting(["kvm1"]) == {"kvm1": False}
    assert [(s.host.name, s.ready) for s in await services.hosts.list_hosts()] == [("kvm1", False)]
    await services.labs.create_deployment(name="waits", template="tiny-linux", replicas=2)
    waiting = await services.machines.list_machines(deployment="waits")
    assert [m.host for m in waiting] == [None, None]
    assert all("no host is ready" in m.message for m in waiting)

    async with services.feed.subscribe() as subscription:
        back = await services.hosts.heartbeat(name="kvm1")
        assert services.hosts.host_ready(back)
        delivered = [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]
        # The host came back: what waited is placed on it (those machines' and their lab's
        # changes go out), but the host's own record is not in the feed.
        assert "machines" in {c.collection for c in delivered}
        assert "hosts" not in {c.collection for c in delivered}
        assert [m.host for m in await services.machines.list_machines(deployment="waits")] == ["kvm1", "kvm1"]
        assert (await services.hosts.host_status("kvm1")).ready
        assert await services.hosts.hosts_reporting(["kvm1"]) == {"kvm1": True}

        # A beat of a host that stays ready writes its record and nothing else.
        before = (await services.hosts.get_host("kvm1")).last_heartbeat
        await services.hosts.heartbeat(name="kvm1")
        assert subscription.queue.empty()
        assert (await services.hosts.get_host("kvm1")).last_heartbeat >= before
