"""How failures look to a GraphQL client: every error carries `extensions.code`.

Domain errors keep their message and code (and `field` for VALIDATION_FAILED). A query over
the depth, alias or token limits is QUERY_TOO_COMPLEX; introspection, where it is switched
off, is FORBIDDEN. Other errors the GraphQL layer finds itself (a string where an Int
belongs, an unknown field) are VALIDATION_FAILED. Anything else is INTERNAL with a generic
message; the details go to the log, not to the client.
"""

from __future__ import annotations

import logging

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from kubekvm.errors import KubeKVMError, ValidationFailed

log = logging.getLogger(__name__)

# What the limiting extensions (strawberry's, graphql-core's parser) say, and the code it gets.
_LIMITS = (("aliases found. Allowed", "QUERY_TOO_COMPLEX"),
           ("exceeds maximum operation depth", "QUERY_TOO_COMPLEX"),
           ("Document contains more than", "QUERY_TOO_COMPLEX"),
           ("introspection has been disabled", "FORBIDDEN"),
           ("introspection is disabled", "FORBIDDEN"))


def _limit_code(message: str) -> str | None:
    return next((code for text, code in _LIMITS if text.lower() in message.lower()), None)


def coded(error: KubeKVMError) -> GraphQLError:
    extensions: dict[str, object] = {"code": error.code}
    if isinstance(error, ValidationFailed):
        extensions["field"] = error.field
    return GraphQLError(error.message, extensions=extensions)


class ErrorCodes(MaskErrors):
    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda _: False)

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [self._classify(e) for e in errors]

    @staticmethod
    def _classify(error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, KubeKVMError):
            extensions: dict[str, object] = {"code": original.code}
            if isinstance(original, ValidationFailed):
                extensions["field"] = original.field
            return GraphQLError(original.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path, extensions=extensions)
        if error.extensions and "code" in error.extensions:
            return error
        if original is None or isinstance(original, GraphQLError):
            code = _limit_code(error.message) or "VALIDATION_FAILED"
            return GraphQLError(error.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path,
                                extensions={**(error.extensions or {}), "code": code})
        log.error("unexpected error in %s", error.path, exc_info=original)
        return GraphQLError("Internal error; the server log has the details.", nodes=error.nodes,
                            source=error.source, positions=error.positions, path=error.path,
                            extensions={"code": "INTERNAL"})
