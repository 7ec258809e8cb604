"""GraphQL operations in the replica's metrics (`kubekvm.metrics`): one count per root field of
each query or mutation, by outcome, and the operation's time.

The `field` label is a root field of the schema (`deployments`, `createDeployment`), read only
from a document that passed validation, so a client cannot invent label values; a refused
document counts as field `invalid`. The outcome is `ok` or the first error's `extensions.code`
(a closed set, `kubekvm.errors`). Subscriptions are counted while open (`kubekvm.quotas`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from strawberry.extensions import SchemaExtension

from kubekvm import metrics
from kubekvm.database import unavailable
from kubekvm.errors import KubeKVMError

INVALID = "invalid"


class OperationMetrics(SchemaExtension):
    # Whether the document passed validation (strawberry keeps execution errors in
    # `pre_execution_errors` too, so that alone cannot tell).
    valid = False

    def on_validate(self) -> Iterator[None]:
        yield
        self.valid = not self.execution_context.pre_execution_errors

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        self.valid = False
        yield
        context = self.execution_context
        result = context.result
        errors = list(context.pre_execution_errors or []) or list(getattr(result, "errors", None) or [])
        try:
            kind = context.operation_type.value
        except RuntimeError:  # no document: it did not parse
            kind = "query"
        if kind == "subscription":
            return
        outcome = _code(errors[0]) if errors else "ok"
        if outcome == "INTERNAL":
            metrics.error(kind="graphql")
        for field in _root_fields(context) if self.valid else [INVALID]:
            metrics.GRAPHQL_OPERATIONS.labels(type=kind, field=field, outcome=outcome).inc()
        metrics.GRAPHQL_DURATION.labels(type=kind).observe(time.perf_counter() - started)


def _code(error: GraphQLError) -> str:
    """The code the client is told (`kubekvm.graphql.errors.ErrorCodes` may not have run yet)."""
    original = error.original_error
    if isinstance(original, KubeKVMError):
        return original.code
    code = (error.extensions or {}).get("code")
    if isinstance(code, str) and code.isupper() and len(code) <= 40:
        return code
    if original is None or isinstance(original, GraphQLError):
        return "VALIDATION_FAILED"
    fault = unavailable(original)
    return fault.code if fault is not None else "INTERNAL"


def _root_fields(context: object) -> list[str]:
    document = getattr(context, "graphql_document", None)
    name = getattr(context, "operation_name", None)
    if document is None:
        return [INVALID]
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
                name is None or (definition.name is not None and definition.name.value == name)):
            fields = sorted({s.name.value for s in definition.selection_set.selections if isinstance(s, FieldNode)})
            return fields or [INVALID]
    return [INVALID]
