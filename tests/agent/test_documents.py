"""The agent's GraphQL documents against the server's published schema (``schema.graphql``).

Every document the agent sends is checked here: it validates against the real schema; the
variables the agent (and the page tests' fake host) build for it are exactly the ones it
declares and coerce to their types; and every mutation passes *every* field of the input it
fills, so a field the server expects (the power generation of a state report) cannot be left
out of the real agent while the fakes send it. The client tests' stand-in server must accept
the same documents, so it cannot drift from the real contract either.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLInputObjectType,
    GraphQLSchema,
    ObjectValueNode,
    OperationDefinitionNode,
    build_schema,
    get_named_type,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values
from test_client import FakeServer  # the agent tests' directory is on sys.path (no package)
from test_client import build_schema as build_fake_schema

from agent import documents

ROOT = Path(__file__).resolve().parents[2]

# Each document with the variables the agent builds for it.
EXAMPLES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "RegisterHost": (documents.REGISTER_HOST, lambda: documents.register_host(
        name="kvm-01", vcpus=16, memory_mib=65536, images=["tiny-linux.qcow2"],
        domain_type="kvm", agent_version="1.0")),
    "Heartbeat": (documents.HEARTBEAT, lambda: documents.heartbeat(
        name="kvm-01", images=["tiny-linux.qcow2"],
        pulls=[{"image": "sha256-" + "0" * 64 + ".qcow2", "doneBytes": 1.0, "totalBytes": 2.0, "error": ""}])),
    "ReportMachineState": (documents.REPORT_MACHINE_STATE, lambda: documents.report_machine_state(
        machine_id="m1", host="kvm-01", state="running", message=None, power_generation=3,
        cpu_seconds=12.5)),
    "ReportMachineStates": (documents.REPORT_MACHINE_STATES, lambda: documents.report_machine_states(
        host="kvm-01", reports=[documents.machine_state_report(
            machine_id="m1", state="running", message=None, power_generation=3, cpu_seconds=12.5)])),
    "ReportOrphans": (documents.REPORT_ORPHANS, lambda: documents.report_orphans(
        host="kvm-01", domains=["kubekvm-old-0"])),
    "HostAssignments": (documents.HOST_ASSIGNMENTS, lambda: documents.host_assignments(
        host="kvm-01", cursor=None)),
    "ConsoleRequests": (documents.CONSOLE_REQUESTS, lambda: documents.console_requests(
        host="kvm-01")),
}


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text())


def operation(document: str) -> OperationDefinitionNode:
    [definition] = parse(document).definitions
    assert isinstance(definition, OperationDefinitionNode)
    return definition


def test_every_document_is_exercised_here() -> None:
    assert set(EXAMPLES) == set(documents.ALL)
    for name, (document, _) in EXAMPLES.items():
        assert documents.ALL[name] is document
        assert operation(document).name is not None
        assert operation(document).name.value == name  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(documents.ALL))
def test_the_document_is_valid_against_schema_graphql(schema: GraphQLSchema, name: str) -> None:
    document, variables = EXAMPLES[name]
    assert validate(schema, parse(document)) == []
    definitions = operation(document).variable_definitions
    built = variables()
    assert set(built) == {definition.variable.name.value for definition in definitions}
    coerced = get_variable_values(schema, definitions, built)
    assert not isinstance(coerced, list), coerced


@pytest.mark.parametrize("name", sorted(documents.ALL))
def test_mutations_fill_every_field_of_their_input(schema: GraphQLSchema, name: str) -> None:
    """An input field the document leaves out is a field the server never hears from the
    real agent (how ``powerGeneration`` went missing while the fakes sent it)."""
    document, _ = EXAMPLES[name]
    root = operation(document)
    for selection in root.selection_set.selections:
        field_name = selection.name.value  # type: ignore[attr-defined]
        root_type = schema.mutation_type if root.operation.value == "mutation" else None
        if root_type is None:
            continue
        for argument in selection.arguments:  # type: ignore[attr-defined]
            declared = get_named_type(root_type.fields[field_name].args[argument.name.value].type)
            if not isinstance(declared, GraphQLInputObjectType):
                continue
            assert isinstance(argument.value, ObjectValueNode)
            sent = {field.name.value for field in argument.value.fields}
            assert sent == set(declared.fields), (
                f"{name} leaves out {sorted(set(declared.fields) - sent)} of {declared.name}")


def test_each_report_of_a_batch_fills_every_field_of_its_input(schema: GraphQLSchema) -> None:
    """The batch's reports travel as a variable (a list of inputs), which the test above does
    not see into: the builder must fill every field of the report's input type."""
    report = schema.type_map["MachineStateReportInput"]
    assert isinstance(report, GraphQLInputObjectType)
    built = documents.machine_state_report(machine_id="m1", state="shutoff", message="off", power_generation=2,
                                           cpu_seconds=None)
    assert set(built) == set(report.fields)
    assert (built["state"], built["powerGeneration"]) == ("SHUTOFF", 2)


def test_report_machine_state_carries_the_observed_generation() -> None:
    variables = documents.report_machine_state(
        machine_id="m1", host="kvm-01", state="shutoff", message=None, power_generation=2)
    assert variables["powerGeneration"] == 2 and variables["state"] == "SHUTOFF"


# The stand-in plays a server without consoles (the client must carry on without them).
@pytest.mark.parametrize("name", sorted(set(documents.ALL) - {"ConsoleRequests"}))
def test_the_client_tests_stand_in_server_accepts_the_same_documents(name: str) -> None:
    fake = build_fake_schema(FakeServer())._schema
    document, variables = EXAMPLES[name]
    assert validate(fake, parse(document)) == []
    coerced = get_variable_values(fake, operation(document).variable_definitions, variables())
    assert not isinstance(coerced, list), coerced
