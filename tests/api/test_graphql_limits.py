"""The schema's limits (depth, aliases, tokens, introspection) and the cache of parsed and
validated documents in front of them: a document met again is not validated again, and a
cached answer is the same answer (a refusal stays a refusal, a variable no database could
store is refused whatever the cache holds). In process: validation runs before any resolver."""

from __future__ import annotations

import dataclasses

import pytest

from kubekvm.config import Settings
from kubekvm.graphql import schema as schema_module
from kubekvm.graphql.schema import build_schema


async def test_a_document_met_again_is_parsed_and_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = build_schema(dataclasses.replace(Settings(), graphql_introspection=True))
    calls: list[str] = []

    def counting(name: str) -> object:
        real = getattr(schema_module, name)

        def call(*args: object, **kwargs: object) -> object:
            calls.append(name)
            return real(*args, **kwargs)

        return call

    for name in ("parse", "validate"):
        monkeypatch.setattr(schema_module, name, counting(name))
    query = "query CacheProbe($n: String!) { __type(name: $n) { name } }"
    for _ in range(3):
        result = await schema.execute(query, variable_values={"n": "Host"}, context_value={})
        assert result.errors is None and result.data == {"__type": {"name": "Host"}}
    assert calls == ["parse", "validate"]
    # A variable no database could store is refused, cached document or not.
    refused = await schema.execute(query, variable_values={"n": "\ud800"}, context_value={})
    assert refused.errors and refused.errors[0].extensions["code"] == "VALIDATION_FAILED"


async def test_limits_refuse_and_keep_refusing() -> None:
    settings = dataclasses.replace(Settings(), graphql_max_aliases=3, graphql_introspection=False)
    schema = build_schema(settings)
    aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(4)) + " }"
    introspection = "{ __schema { types { name } } }"
    for _ in range(2):  # the second time from the cache
        for document, code in ((aliases, "QUERY_TOO_COMPLEX"), (introspection, "FORBIDDEN"),
                               ("{ " + "__typename " * 5001 + "}", "QUERY_TOO_COMPLEX")):
            result = await schema.execute(document, context_value={})
            assert result.errors, document
            assert (result.errors[0].extensions or {}).get("code") == code, result.errors[0]
