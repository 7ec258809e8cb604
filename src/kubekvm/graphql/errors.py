"""How failures look to a GraphQL client: every error carries `extensions.code`.

Domain errors keep their message and code (and `field` for VALIDATION_FAILED). Errors the
GraphQL layer finds itself (a string where an Int belongs, an unknown field) are
VALIDATION_FAILED. Anything else is INTERNAL with a generic message; the details go to the
log, not to the client.
"""

from __future__ import annotations

import logging

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from kubekvm.errors import KubeKVMError, ValidationFailed

log = logging.getLogger(__name__)


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
            return GraphQLError(error.message, nodes=error.nodes, source=error.source,
                                positions=error.positions, path=error.path,
                                extensions={**(error.extensions or {}), "code": "VALIDATION_FAILED"})
        log.error("unexpected error in %s", error.path, exc_info=original)
        return GraphQLError("Internal error; the server log has the details.", nodes=error.nodes,
                            source=error.source, positions=error.positions, path=error.path,
                            extensions={"code": "INTERNAL"})
