"""Subscription results shared by every subscriber of a change: one execution and one
serialization per change and question, not one per subscriber.

Thousands may follow the same lab. Each change reaches all of them as the same event object
(`kubekvm.streams` parses a change once; the `deploymentEvents` resolver builds its event once),
so what each of them would compute from it is the same as long as they asked the same thing.
`SharingExecutor` (the schema's execution context) executes a subscription's selection set on
such an event once per *question* — the query text, the operation, the variables and, when the
selection reads anything through the caller (a resolver that takes `info`: a lab's roster, its
machines, its history), the caller — and hands every later subscriber with the same question the
same result. `encoded_next` turns a shared result into the websocket's `next` message text once,
and each subscriber's message is that text with its own operation id put in front
(`kubekvm.graphql.websocket`).

What is shared is kept for the last `SHARED_EVENTS` events only, by identity: an event object
that left the table is executed afresh (correct, only slower).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Hashable
from typing import Any

from graphql import (
    ExecutionResult,
    GraphQLSchema,
    OperationType,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    visit,
)
from graphql.language import DocumentNode, FieldNode, FragmentDefinitionNode, OperationDefinitionNode
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# Events whose results are kept for later subscribers (a burst of a 100-VM lab is a few hundred).
SHARED_EVENTS = 512
# Questions (query texts) whose viewer-dependence is remembered.
QUESTIONS = 1024

_SHARED_TYPES: tuple[type, ...] = ()


def share_results_of(cls: type) -> type:
    """Class decorator: subscription events of this type are handed to many subscribers as one
    object, so their results may be shared (`SharingExecutor`)."""
    global _SHARED_TYPES
    _SHARED_TYPES = (*_SHARED_TYPES, cls)
    return cls


class _Table:
    """What was computed for recent events: event -> question -> result (or the task computing
    it), and shared result data -> its encoded `next` payload. Keyed by identity, holding a
    reference, so an id is never reused while it is in the table."""

    def __init__(self) -> None:
        self.results: OrderedDict[int, tuple[object, dict[Hashable, Any]]] = OrderedDict()
        self.payloads: OrderedDict[int, tuple[object, str | None]] = OrderedDict()
        self.viewer_dependent: OrderedDict[str, bool] = OrderedDict()

    def of_event(self, event: object) -> dict[Hashable, Any]:
        entry = self.results.get(id(event))
        if entry is None or entry[0] is not event:
            entry = (event, {})
            self.results[id(event)] = entry
            while len(self.results) > SHARED_EVENTS:
                self.results.popitem(last=False)
        return entry[1]

    def shared(self, data: object) -> None:
        if data is not None and id(data) not in self.payloads:
            self.payloads[id(data)] = (data, None)
            while len(self.payloads) > SHARED_EVENTS * 4:
                self.payloads.popitem(last=False)

    def clear(self) -> None:
        self.results.clear()
        self.payloads.clear()


_table = _Table()


def encoded_next(operation_id: str, payload: dict[str, Any]) -> str | None:
    """The `next` message for a payload whose data is a shared result, encoded once for all the
    subscribers it goes to; None for any other payload (encoded as usual)."""
    if len(payload) != 1 or "data" not in payload:
        return None
    data = payload["data"]
    entry = _table.payloads.get(id(data))
    if entry is None or entry[0] is not data:
        return None
    text = entry[1]
    if text is None:
        text = json.dumps({"data": data}, separators=(",", ":"))
        _table.payloads[id(data)] = (data, text)
    return f'{{"id":{json.dumps(operation_id)},"type":"next","payload":{text}}}'


def forget() -> None:
    """Drops every shared result (memory returns to the allocator once nobody holds them)."""
    _table.clear()


class SharingExecutor(StrawberryGraphQLCoreExecutionContext):
    """Executes a subscription event once per question (see the module's docstring)."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        event = self.root_value
        if (not _SHARED_TYPES or not isinstance(event, _SHARED_TYPES)
                or self.operation.operation != OperationType.SUBSCRIPTION):
            return super().execute_operation(serially)
        question = self._question()
        if question is None:
            return super().execute_operation(serially)
        results = _table.of_event(event)
        found = results.get(question)
        if found is None:
            outcome = super().execute_operation(serially)
            if not self.is_awaitable(outcome):
                _remember(outcome)
                results[question] = outcome
                return outcome
            found = results[question] = asyncio.ensure_future(_finished(outcome))
        if isinstance(found, asyncio.Future):
            return _shielded(found)
        return found

    def _question(self) -> Hashable | None:
        location = self.operation.loc
        if location is None:
            return None
        text = location.source.body
        try:
            variables = json.dumps(self.variable_values.coerced, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return None
        name = self.operation.name.value if self.operation.name else None
        viewer: Hashable = None
        if self._reads_through_caller(text):
            services = self.context_value.get("services") if isinstance(self.context_value, dict) else None
            actor = getattr(services, "actor", None)
            if actor is None:
                return None
            viewer = (actor.kind, actor.name, actor.role)
        return text, name, variables, viewer

    def _reads_through_caller(self, text: str) -> bool:
        known = _table.viewer_dependent.get(text)
        if known is None:
            known = reads_through_caller(self.schema, self.operation, list(self.fragment_definitions.values()))
            _table.viewer_dependent[text] = known
            while len(_table.viewer_dependent) > QUESTIONS:
                _table.viewer_dependent.popitem(last=False)
        return known


def reads_through_caller(schema: GraphQLSchema, operation: OperationDefinitionNode,
                         fragments: list[FragmentDefinitionNode]) -> bool:
    """Whether a selection asks for a field (below the root) whose resolver takes `info`, and
    so may answer differently for another caller."""
    found = False
    type_info = TypeInfo(schema)
    root = schema.subscription_type

    class Finder(Visitor):
        def enter_field(self, node: FieldNode, *_: Any) -> None:
            nonlocal found
            if type_info.get_parent_type() is root:
                return
            field = type_info.get_field_def()
            definition = field.extensions.get("strawberry-definition") if field is not None else None
            resolver = getattr(definition, "base_resolver", None)
            if field is None or (resolver is not None and resolver.info_parameter is not None):
                found = True

    for node in [operation, *fragments]:
        visit(DocumentNode(definitions=(node,)), TypeInfoVisitor(type_info, Finder()))
    return found


def _remember(result: Any) -> None:
    if isinstance(result, ExecutionResult) and not result.errors:
        _table.shared(result.data)


async def _finished(outcome: Awaitable[Any]) -> Any:
    result = await outcome
    _remember(result)
    return result


async def _shielded(task: asyncio.Future[Any]) -> Any:
    # One subscriber leaving (its task cancelled) must not cancel the execution the others wait on.
    return await asyncio.shield(task)
