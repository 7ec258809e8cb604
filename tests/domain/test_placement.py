"""Placement: ready host, image present, capacity free, most free memory first."""

from __future__ import annotations

from kubekvm.placement import HostCapacity, Need, plan


def host(name: str, *, ready: bool = True, images: tuple[str, ...] = ("winxp.qcow2",),
         vcpus: int = 8, memory: int = 4096) -> HostCapacity:
    return HostCapacity(name=name, ready=ready, images=frozenset(images), free_vcpus=vcpus,
                        free_memory_mib=memory)


XP = Need(image="winxp.qcow2", vcpus=1, memory_mib=512)


def test_spreads_by_most_free_memory() -> None:
    result = plan(hosts=[host("a", memory=2048), host("b", memory=2048)], needs=[XP] * 4)
    assert sorted(result.placed.values()) == ["a", "a", "b", "b"]


def test_skips_unready_hosts_and_hosts_without_the_image() -> None:
    result = plan(hosts=[host("down", ready=False, memory=99999), host("noimg", images=()),
                         host("ok")], needs=[XP])
    assert result.placed == {0: "ok"}


def test_unplaced_machines_say_why() -> None:
    assert plan(hosts=[], needs=[XP]).unplaced[0].startswith("no host is registered")
    assert plan(hosts=[host("a", ready=False)], needs=[XP]).unplaced[0].startswith("no host is ready")
    assert plan(hosts=[host("a", images=())], needs=[XP]).unplaced[0] == "no ready host has image winxp.qcow2"
    full = plan(hosts=[host("a", memory=1000)], needs=[XP, XP, XP])
    assert full.placed == {0: "a"} and set(full.unplaced) == {1, 2}
    assert full.unplaced[1] == "no ready host has image winxp.qcow2 with 512 MiB and 1 vCPU(s) free"


def test_vcpus_are_a_limit_too() -> None:
    result = plan(hosts=[host("a", vcpus=1)], needs=[XP, XP])
    assert list(result.placed) == [0] and list(result.unplaced) == [1]


GOLDEN = "sha256-" + "ab" * 32 + ".qcow2"


def test_a_store_image_goes_where_it_is_held_else_anywhere_it_can_be_pulled() -> None:
    need = Need(image=GOLDEN, vcpus=1, memory_mib=512)
    held = plan(hosts=[host("roomy", images=(), memory=9999), host("holder", images=(GOLDEN,), memory=1024)],
                needs=[need, need, need])
    # The holder first (no pull to wait for), until it is full; then a host that will pull it.
    assert held.placed == {0: "holder", 1: "holder", 2: "roomy"}
    assert plan(hosts=[host("empty", images=())], needs=[need]).placed == {0: "empty"}
    # A plain file name is never pulled: only hosts that have it qualify.
    assert plan(hosts=[host("empty", images=())], needs=[XP]).placed == {}


def test_availability_counts_the_machines_ready_hosts_with_the_image_could_take() -> None:
    from kubekvm.placement import HostCapacity, Need, availability

    hosts = [HostCapacity(name="a", ready=True, images=frozenset({"x.qcow2"}), free_vcpus=8, free_memory_mib=1024),
             HostCapacity(name="b", ready=True, images=frozenset({"x.qcow2"}), free_vcpus=1, free_memory_mib=4096),
             HostCapacity(name="c", ready=False, images=frozenset({"x.qcow2"}), free_vcpus=64, free_memory_mib=65536)]
    x = availability(hosts=hosts, need=Need(image="x.qcow2", vcpus=1, memory_mib=512))
    assert (x.hosts, x.machines, x.can_run, x.reason) == (2, 3, True, None)
    y = availability(hosts=hosts, need=Need(image="y.qcow2", vcpus=1, memory_mib=512))
    assert not y.can_run and y.reason == "no ready host has image y.qcow2"
    full = availability(hosts=hosts, need=Need(image="x.qcow2", vcpus=1, memory_mib=8192))
    assert full.machines == 0 and full.reason is not None and "8192 MiB" in full.reason
