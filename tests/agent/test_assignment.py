"""Assignments and names: what the server sends is parsed and validated before use."""

from __future__ import annotations

import pytest

from agent.assignment import Assignment, AssignmentError
from agent.names import InvalidName, check_image_name, check_lab_name, domain_name

PAYLOAD = {
    "machineId": "m1",
    "vmName": "os101-3",
    "deployment": "os101",
    "index": 3,
    "desired": "RUNNING",
    "resetGeneration": 2,
    "powerGeneration": 5,
    "template": {
        "name": "Debian 12",
        "image": "debian12.qcow2",
        "os": "linux",
        "vcpus": 2,
        "memoryMib": 2048,
        "diskGib": 20,
    },
}


@pytest.mark.parametrize(
    "name",
    ["a;b", "$(x)", "../x", "Upper", "ünï", "a" * 41, "", "-a", "a-", "a\n", "a b", "a_b",
     "a/b", "a.b"],
)
def test_hostile_lab_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        check_lab_name(name)
    with pytest.raises(InvalidName):
        domain_name(name, 0)


@pytest.mark.parametrize("name", ["a", "0", "os-101", "a" * 40, "a-b-c"])
def test_lab_names_like_dns_labels_are_accepted(name: str) -> None:
    assert domain_name(name, 7) == f"kubekvm-{name}-7"


@pytest.mark.parametrize("index", [-1, 10000, True, "1", 1.0])
def test_bad_indexes_are_rejected(index: object) -> None:
    with pytest.raises(InvalidName):
        domain_name("lab", index)  # type: ignore[arg-type]


@pytest.mark.parametrize("image", ["../etc/passwd", "/abs.qcow2", ".hidden.qcow2", "a b.qcow2",
                                   "a/b.qcow2", ""])
def test_image_names_must_be_plain_file_names(image: str) -> None:
    with pytest.raises(InvalidName):
        check_image_name(image)


def test_image_name_gets_the_qcow2_suffix() -> None:
    assert check_image_name("winxp") == "winxp.qcow2"
    assert check_image_name("winxp.qcow2") == "winxp.qcow2"


def test_from_graphql_parses_the_subscription_payload() -> None:
    assignment = Assignment.from_graphql(PAYLOAD)
    assert assignment.machine_id == "m1"
    assert assignment.desired == "running"
    assert assignment.reset_generation == 2
    assert assignment.power_generation == 5
    assert assignment.domain_name == "kubekvm-os101-3"
    assert assignment.template.memory_mib == 2048
    assert assignment.template.image == "debian12.qcow2"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"deployment": "Bad;Name"}, "lab name"),
        ({"desired": "EXPLODED"}, "desired state"),
        ({"index": -2}, "index"),
        ({"resetGeneration": "1"}, "resetGeneration"),
        ({"template": {**PAYLOAD["template"], "vcpus": 0}}, "vcpus"),  # type: ignore[dict-item]
        ({"template": {**PAYLOAD["template"], "image": "../x"}}, "image"),  # type: ignore[dict-item]
        ({"vmName": None}, "vmName"),
    ],
)
def test_invalid_payloads_name_the_machine_to_report(change: dict[str, object],
                                                     fragment: str) -> None:
    with pytest.raises(AssignmentError) as raised:
        Assignment.from_graphql({**PAYLOAD, **change})
    assert raised.value.machine_id == "m1"
    assert fragment in str(raised.value)


def test_missing_fields_are_an_assignment_error() -> None:
    payload = dict(PAYLOAD)
    del payload["template"]
    with pytest.raises(AssignmentError, match="template"):
        Assignment.from_graphql(payload)
