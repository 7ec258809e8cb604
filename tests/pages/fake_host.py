"""A stand-in for the host agent, for page tests: it registers a host and reports machine
states over GraphQL, exactly the calls the agent makes (the agent's own documents and
variables, from ``agent.documents``), but without libvirt.

`converge` is one level-triggered pass of the agent: each machine of a lab assigned to this
host is reported as what it should be (running, shut off, or gone). Tests call it when they
want "the hosts" to catch up, so they decide when a change becomes visible. Swapping in the
real agent on `test:///default` later means replacing `converge` by waiting for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent import documents
from tests.support.processes import Server

# Not an agent call (the agent learns its machines from hostAssignments): how the fake host
# finds what it should report.
MACHINES = """
query($lab: String!) {
  machines(deployment: $lab) { id name host desired observed powerGeneration }
}
"""
# What the agent makes of a machine, by its desired state.
OUTCOME = {"RUNNING": "RUNNING", "STOPPED": "SHUTOFF", "ABSENT": "ABSENT"}


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert not body.get("errors"), body["errors"]
    result: dict[str, Any] = body["data"]
    return result


class FakeHost:
    def __init__(self, server: Server, *, name: str = "fake-host-1", vcpus: int = 16,
                 memory_mib: int = 64 * 1024, images: Iterable[str] = ("tiny-linux.qcow2",)) -> None:
        self.server = server
        self.name = name
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self.images = list(images)

    def register(self) -> FakeHost:
        data(self.server.graphql(documents.REGISTER_HOST, documents.register_host(
            name=self.name, vcpus=self.vcpus, memory_mib=self.memory_mib, images=self.images,
            domain_type="test", agent_version="t",
        )))
        return self

    def heartbeat(self) -> None:
        data(self.server.graphql(documents.HEARTBEAT, documents.heartbeat(name=self.name, images=None)))

    def machines(self, lab: str) -> list[dict[str, Any]]:
        machines: list[dict[str, Any]] = data(self.server.graphql(MACHINES, {"lab": lab}))["machines"]
        return machines

    def report(self, machine: dict[str, Any], state: str, message: str = "") -> None:
        self.report_all([(machine, state, message)])

    def report_all(self, reports: list[tuple[dict[str, Any], str, str]]) -> None:
        """One batch, as the agent sends the reports of a few milliseconds; each must be accepted.
        Each carries the machine's latest start/stop request, as the agent's after acting on it."""
        batch = documents.report_machine_states(host=self.name, reports=[documents.machine_state_report(
            machine_id=machine["id"], state=state, message=message, power_generation=machine["powerGeneration"],
        ) for machine, state, message in reports])
        outcomes = data(self.server.graphql(documents.REPORT_MACHINE_STATES, batch))["reportMachineStates"]
        refused = [outcome for outcome in outcomes if not outcome["accepted"]]
        assert not refused, refused

    def converge(self, lab: str, *, only: Iterable[str] | None = None) -> int:
        """Report every machine of `lab` on this host (or just those named in `only`) as what
        it should be, in one batch; returns how many reports were sent."""
        self.heartbeat()  # a host that was quiet too long gets its pending machines now
        wanted = set(only) if only is not None else None
        reports = [(machine, OUTCOME[machine["desired"]], "") for machine in self.machines(lab)
                   if machine["host"] == self.name and (wanted is None or machine["name"] in wanted)]
        if reports:
            self.report_all(reports)
        return len(reports)
