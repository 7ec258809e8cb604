"""Documents: every GraphQL operation the agent sends, and the variables each one takes.

This module is the whole wire contract between the agent and the server. The real client
(``agent.client``), the agent's client tests and the page tests' fake host
(``tests/pages/fake_host.py``) all send these same documents built by these same functions,
and a test validates each document against the repository's ``schema.graphql`` and checks
that it passes every field of the server's input types: a stand-in that sent what the real
agent does not (or the reverse) is how the server once saw a power generation from the fakes
and never from production.
"""

from __future__ import annotations

from typing import Any, Final

from agent.machine_state import ObservedState

REGISTER_HOST: Final = """
mutation RegisterHost($name: String!, $vcpus: Int!, $memoryMib: Int!, $images: [String!]!,
                      $domainType: String!, $agentVersion: String!) {
  registerHost(input: {name: $name, vcpus: $vcpus, memoryMib: $memoryMib, images: $images,
                       domainType: $domainType, agentVersion: $agentVersion}) { name ready }
}
"""
HEARTBEAT: Final = """
mutation Heartbeat($name: String!, $images: [String!], $pulls: [ImagePullInput!]) {
  heartbeat(input: {name: $name, images: $images, pulls: $pulls}) { name dropImages }
}
"""
REPORT_MACHINE_STATE: Final = """
mutation ReportMachineState($machineId: ID!, $host: String!, $state: ObservedMachineState!,
                            $message: String, $powerGeneration: Int, $cpuSeconds: Float) {
  reportMachineState(input: {machineId: $machineId, host: $host, state: $state,
                             message: $message, powerGeneration: $powerGeneration,
                             cpuSeconds: $cpuSeconds}) {
    __typename
  }
}
"""
REPORT_MACHINE_STATES: Final = """
mutation ReportMachineStates($host: String!, $reports: [MachineStateReportInput!]!) {
  reportMachineStates(input: {host: $host, reports: $reports}) { machineId accepted code message }
}
"""
REPORT_ORPHANS: Final = """
mutation ReportOrphans($host: String!, $domains: [String!]!) {
  reportOrphans(input: {host: $host, domains: $domains}) { name }
}
"""
HOST_ASSIGNMENTS: Final = """
subscription HostAssignments($host: String!, $cursor: String) {
  hostAssignments(host: $host, cursor: $cursor) {
    kind
    cursor
    assignments {
      machineId vmName deployment index desired resetGeneration powerGeneration requestId publishJob
      template { name image os vcpus memoryMib diskGib }
    }
    removed
  }
}
"""
CONSOLE_REQUESTS: Final = """
subscription ConsoleRequests($host: String!) {
  consoleRequests(host: $host) { session machineId machine deployment index url }
}
"""

# Every document above, by operation name (the schema test walks this).
ALL: Final = {
    "RegisterHost": REGISTER_HOST,
    "Heartbeat": HEARTBEAT,
    "ReportMachineState": REPORT_MACHINE_STATE,
    "ReportMachineStates": REPORT_MACHINE_STATES,
    "ReportOrphans": REPORT_ORPHANS,
    "HostAssignments": HOST_ASSIGNMENTS,
    "ConsoleRequests": CONSOLE_REQUESTS,
}


def register_host(
    *, name: str, vcpus: int, memory_mib: int, images: list[str], domain_type: str,
    agent_version: str,
) -> dict[str, Any]:
    return {"name": name, "vcpus": vcpus, "memoryMib": memory_mib, "images": images,
            "domainType": domain_type, "agentVersion": agent_version}


def heartbeat(*, name: str, images: list[str] | None,
              pulls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``images=None`` leaves the host's image list as the server has it; ``pulls`` (each
    ``{"image", "doneBytes", "totalBytes", "error"}``): the store images being pulled, None
    leaves the server's list as it is."""
    return {"name": name, "images": images, "pulls": pulls}


def report_machine_state(
    *, machine_id: str, host: str, state: ObservedState | str, message: str | None,
    power_generation: int | None, cpu_seconds: float | None = None,
) -> dict[str, Any]:
    """``power_generation`` is the latest start/stop request the host has carried out, as
    recorded in the domain; None when the report does not know it (the server keeps the
    last one). Without it the server cannot tell "not started yet" from "powered off".
    ``cpu_seconds``: the guest's cumulative CPU time, when this report carries a sample."""
    return {"machineId": machine_id, "host": host, "state": state.upper(), "message": message,
            "powerGeneration": power_generation, "cpuSeconds": cpu_seconds}


def machine_state_report(
    *, machine_id: str, state: ObservedState | str, message: str | None, power_generation: int | None,
    cpu_seconds: float | None = None,
) -> dict[str, Any]:
    """One report of a ``reportMachineStates`` batch (``power_generation`` and ``cpu_seconds``
    as for ``report_machine_state``)."""
    return {"machineId": machine_id, "state": state.upper(), "message": message,
            "powerGeneration": power_generation, "cpuSeconds": cpu_seconds}


def report_machine_states(*, host: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several reports (``machine_state_report``) at once, each machine at most once. Agents
    send this; ``report_machine_state`` is for a server older than the batches."""
    return {"host": host, "reports": reports}


def report_orphans(*, host: str, domains: list[str]) -> dict[str, Any]:
    return {"host": host, "domains": domains}


def host_assignments(*, host: str, cursor: str | None) -> dict[str, Any]:
    return {"host": host, "cursor": cursor}


def console_requests(*, host: str) -> dict[str, Any]:
    return {"host": host}
