"""A property-based fuzz of the whole GraphQL schema against a real server and database.

hypothesis-graphql writes operations from `schema.graphql` (the schema the server serves):
valid ones with arbitrary argument values (NUL bytes, odd Unicode, huge and negative numbers),
and, in NEGATIVE mode, ones with one schema violation each. Every answer must be
- no 5xx, and GraphQL-shaped JSON;
- every error carrying `extensions.code`, and never INTERNAL (an unexpected failure);
- a refused mutation (an error, no data) having changed nothing: the writable collections are
  compared before and after it.
Generated operations are also sent with every string literal turned into a variable holding
hostile text, which literals cannot hold (a lone surrogate) — so every String, ID and DateTime
argument of every field is tried with it.

Examples are derandomized so CI is reproducible. `make test` runs a quarter of the full
example counts (`FUZZ_SMOKE`: every test and mode still runs, on fewer operations); `make fuzz`
runs the full counts (KUBEKVM_FUZZ_SCALE=1), and KUBEKVM_FUZZ_RANDOM=1 explores new examples.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import graphql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries

from tests.security.input_support import FUZZ_SMOKE, TEMPLATE, post_graphql, snapshot
from tests.support.processes import ROOT, Server

SCHEMA = graphql.build_schema((ROOT / "schema.graphql").read_text())
SCALE = float(os.environ.get("KUBEKVM_FUZZ_SCALE", FUZZ_SMOKE))
SCALARS = {"DateTime": st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                                    timezones=st.just(UTC)).map(lambda d: graphql.StringValueNode(value=d.isoformat()))}
MUTATIONS = sorted(SCHEMA.mutation_type.fields) if SCHEMA.mutation_type else []


def fuzz(examples: int) -> Any:
    return settings(max_examples=max(int(examples * SCALE), 1), deadline=None, database=None,
                    derandomize=os.environ.get("KUBEKVM_FUZZ_RANDOM") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    """A server of its own, not the shared one: the fuzz's hostile writes and failed sign-ins
    must reach no other module."""
    return start_kubekvm()


@pytest.fixture(scope="module")
def world(server: Server) -> Server:
    """Something for the fuzz to find: a template, a lab, a teacher and a host token."""
    assert not post_graphql(server, "mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                            {"i": TEMPLATE}).get("errors")
    assert not post_graphql(server, 'mutation { createDeployment(input: {name: "fuzz-lab", template: "sec-tiny", '
                                    'replicas: 2, power: STOPPED}) { name } }').get("errors")
    server.user("fuzz-teacher", "teacher")
    return server


def check(server: Server, operation: str, *, token: str | None = None, mutation: bool = False,
          variables: dict[str, Any] | None = None) -> None:
    before = snapshot(server) if mutation else None
    body = post_graphql(server, operation, variables, token=token)  # asserts no 5xx and JSON
    assert "data" in body or "errors" in body, body
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code, (operation, error)
        assert code != "INTERNAL", (operation, error)
    if mutation and body.get("errors") and not any((body.get("data") or {}).values()):
        assert snapshot(server) == before, operation


@pytest.mark.parametrize("mode", [Mode.POSITIVE, Mode.NEGATIVE])
def test_fuzz_queries(world: Server, mode: Mode) -> None:
    @fuzz(60 if mode == Mode.POSITIVE else 40)
    @given(queries(SCHEMA, custom_scalars=SCALARS, mode=mode))
    def run(operation: str) -> None:
        check(world, operation)

    run()


@pytest.mark.parametrize("mode", [Mode.POSITIVE, Mode.NEGATIVE])
def test_fuzz_mutations_one_at_a_time(world: Server, mode: Mode) -> None:
    strategy = st.sampled_from(MUTATIONS).flatmap(
        lambda name: mutations(SCHEMA, fields=[name], custom_scalars=SCALARS, mode=mode))

    @fuzz(120 if mode == Mode.POSITIVE else 60)
    @given(strategy)
    def run(operation: str) -> None:
        check(world, operation, mutation=True)

    run()


# Text nobody types: lone surrogates (JSON can carry them, GraphQL literals cannot), NUL and
# other control characters, text-direction overrides, very long text.
HOSTILE_TEXT = st.sampled_from(["\ud800", "a\udfffb", "\x00", "a\x00b", "\u202eevil", "\x1b[2J", "x" * 3000,
                                "9" * 30, "", " "]) | st.text(st.characters(codec=None, exclude_categories=()),
                                                             max_size=40)


def with_variables(operation: str) -> tuple[str, list[str]]:
    """`operation` with each string literal replaced by a variable of the type expected there,
    so what goes in can be anything JSON carries; returns the new text and the variable names."""
    document = graphql.parse(operation)
    type_info = graphql.TypeInfo(SCHEMA)
    expected: dict[int, graphql.GraphQLInputType] = {}

    class Collect(graphql.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: object) -> None:
            input_type = type_info.get_input_type()
            if input_type is not None:
                expected[id(node)] = input_type

    graphql.visit(document, graphql.TypeInfoVisitor(type_info, Collect()))
    names: dict[int, str] = {key: f"v{n}" for n, key in enumerate(expected)}

    class Replace(graphql.Visitor):
        def enter_string_value(self, node: graphql.StringValueNode, *_: object) -> object:
            if id(node) in names:
                return graphql.VariableNode(name=graphql.NameNode(value=names[id(node)]))
            return None

    replaced = graphql.visit(document, Replace())
    definitions = tuple(
        graphql.VariableDefinitionNode(variable=graphql.VariableNode(name=graphql.NameNode(value=names[key])),
                                       type=graphql.parse_type(str(expected[key]))) for key in names)
    operation_node = dataclasses.replace(replaced.definitions[0], variable_definitions=definitions)
    return graphql.print_ast(dataclasses.replace(replaced, definitions=(operation_node,))), list(names.values())


@st.composite
def hostile_variables(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    name = draw(st.sampled_from([*sorted(SCHEMA.query_type.fields), *MUTATIONS] if SCHEMA.query_type else MUTATIONS))
    kind = mutations if name in MUTATIONS else queries
    operation, variables = with_variables(draw(kind(SCHEMA, fields=[name], custom_scalars=SCALARS)))
    return operation, {variable: draw(HOSTILE_TEXT) for variable in variables}


def test_fuzz_every_string_argument_with_hostile_text(world: Server) -> None:
    @fuzz(150)
    @given(hostile_variables())
    def run(example: tuple[str, dict[str, str]]) -> None:
        operation, variables = example
        check(world, operation, variables=variables, mutation=operation.startswith("mutation"))

    run()


def test_fuzz_as_a_teacher_and_as_nobody(world: Server) -> None:
    teacher = world.token_for("fuzz-teacher")

    @fuzz(40)
    @given(st.sampled_from([teacher, "kk_not-a-token"]), queries(SCHEMA, custom_scalars=SCALARS) | st.sampled_from(
        MUTATIONS).flatmap(lambda name: mutations(SCHEMA, fields=[name], custom_scalars=SCALARS)))
    def run(token: str, operation: str) -> None:
        check(world, operation, token=token, mutation=operation.startswith("mutation"))

    run()
