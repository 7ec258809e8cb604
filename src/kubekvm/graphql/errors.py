"""How failures look to a GraphQL client: every error carries `extensions.code`.

Domain errors keep their message and code (and `field` for VALIDATION_FAILED, with
`suggestion` where a valid value can be derived). A request refused for several fields at once
(`FieldErrors`) is answered with one error per field, each with its own `field`, at the same
path. A query over
the depth, alias or token limits is QUERY_TOO_COMPLEX; introspection, where it is switched
off, is FORBIDDEN. Other errors the GraphQL layer finds itself (a string where an Int
belongs, an unknown field) are VALIDATION_FAILED, with `field` naming the argument or input
field when the error is about one. A database fault (unreachable, timed out, no primary:
`kubekvm.database.unavailable`) is UNAVAILABLE, logged as one line, so a client retries.
Anything else is INTERNAL with a generic message; the details go to the log, not to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from graphql import ArgumentNode, DocumentNode, Node, ObjectFieldNode, VariableNode, Visitor, parse, visit
from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from kubekvm.database import unavailable
from kubekvm.errors import KubeKVMError, ValidationFailed, each_field
from kubekvm.faults import quiet

log = logging.getLogger(__name__)

# What the limiting extensions (strawberry's, graphql-core's parser) say, and the code it gets.
_LIMITS = (("aliases found. Allowed", "QUERY_TOO_COMPLEX"),
           ("exceeds maximum operation depth", "QUERY_TOO_COMPLEX"),
           ("Document contains more than", "QUERY_TOO_COMPLEX"),
           ("introspection has been disabled", "FORBIDDEN"),
           ("introspection is disabled", "FORBIDDEN"))


def _limit_code(message: str) -> str | None:
    return next((code for text, code in _LIMITS if text.lower() in message.lower()), None)


# graphql-core's words for an argument of the wrong type, and where they name the argument.
_VARIABLE = re.compile(r"Variable '\$(\w+)' (?:has|got) invalid value(?: at ([^:;]+))?")
_NAMED = (re.compile(r"required field '(\w+)'"), re.compile(r"^Unknown argument '(\w+)'"),
          re.compile(r"^Field '(\w+)' is not defined by type"), re.compile(r"^Argument '(\w+)'"))


def _field_of(error: GraphQLError) -> str | None:
    """The argument or input field a GraphQL validation error is about (the innermost name), so
    a client learns which of its values was refused, as with the domain's own errors."""
    variable = _VARIABLE.match(error.message)
    if variable:
        inner = re.findall(r"\.(\w+)", variable.group(2) or "")
        if inner:
            return str(inner[-1])
        # The whole variable was refused: name the argument it is given to.
        name = variable.group(1)
        return argument_of(_document(error), name) or name
    for pattern in _NAMED:
        named = pattern.search(error.message)
        if named:
            return named.group(1)
    node = error.nodes[0] if error.nodes else None
    if node is None or node.loc is None or not node.kind.endswith("_value"):
        return None
    # A literal of the wrong type: the innermost argument or input field whose value holds it.
    start = node.loc.start
    return _holder(_document(error), lambda value: value.loc is not None and value.loc.start <= start < value.loc.end)


def _document(error: GraphQLError) -> DocumentNode | None:
    try:
        return parse(error.source) if error.source is not None else None
    except GraphQLError:
        return None


def argument_of(document: DocumentNode | None, variable: str) -> str | None:
    """The argument or input field that variable `$variable` is given to in `document`."""
    return _holder(document, lambda value: isinstance(value, VariableNode) and value.name.value == variable)


def _holder(document: DocumentNode | None, holds: Callable[[Node], bool]) -> str | None:
    """The name of the innermost argument or input field of `document` whose value `holds`
    says yes to."""
    if document is None:
        return None
    found: list[tuple[int, str]] = []

    class Holders(Visitor):
        def enter(self, node: Node, *_: object) -> None:
            value = getattr(node, "value", None)
            if isinstance(node, ArgumentNode | ObjectFieldNode) and isinstance(value, Node) and holds(value):
                found.append((value.loc.end - value.loc.start if value.loc else 0, node.name.value))

    visit(document, Holders())
    return min(found)[1] if found else None


def extensions_of(error: KubeKVMError) -> dict[str, object]:
    """`code`, and for a refused field its name and (where there is one) a value that would pass."""
    extensions: dict[str, object] = {"code": error.code}
    if isinstance(error, ValidationFailed):
        extensions["field"] = error.field
        if error.suggestion is not None:
            extensions["suggestion"] = error.suggestion
    return extensions


def coded(error: KubeKVMError) -> GraphQLError:
    return GraphQLError(error.message, extensions=extensions_of(error))


class ErrorCodes(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda _: False)

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [classified for e in errors for classified in self._each_field(e)]

    def on_stream_result(self, result: Any) -> Iterator[None]:
        # A subscription result without errors has nothing to classify: skip MaskErrors' walk
        # of it (a runtime-protocol isinstance per result), paid once per subscriber per change.
        if any(getattr(result, name, None) for name in ("errors", "incremental", "completed")):
            yield from super().on_stream_result(result)
            return
        self._stream_result_processed = True
        yield None

    @classmethod
    def _each_field(cls, error: GraphQLError) -> list[GraphQLError]:
        original = error.original_error
        if not isinstance(original, ValidationFailed):
            return [cls._classify(error)]
        return [GraphQLError(e.message, nodes=error.nodes, source=error.source, positions=error.positions,
                             path=error.path, extensions=extensions_of(e)) for e in each_field(original)]

    @staticmethod
    def _classify(error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, KubeKVMError):
            return GraphQLError(original.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path, extensions=extensions_of(original))
        if error.extensions and "code" in error.extensions:
            return error
        extensions: dict[str, object]
        if original is None or isinstance(original, GraphQLError):
            code = _limit_code(error.message)
            extensions = {**(error.extensions or {}), "code": code or "VALIDATION_FAILED"}
            field = None if code else _field_of(error)
            if field:
                extensions["field"] = field
            return GraphQLError(error.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path, extensions=extensions)
        fault = unavailable(original)
        if fault is not None:
            quiet.fault(f"GraphQL {'.'.join(map(str, error.path or []))}", original)
            return GraphQLError(fault.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path, extensions={"code": fault.code})
        log.error("unexpected error in %s", error.path, exc_info=original)
        return GraphQLError("Internal error; the server log has the details.", nodes=error.nodes,
                            source=error.source, positions=error.positions, path=error.path,
                            extensions={"code": "INTERNAL"})
