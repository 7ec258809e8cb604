"""Which database errors mean "unreachable right now" (GraphQL UNAVAILABLE, a 503): decided in
one place, `kubekvm.database.unavailable`, for every adapter."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from kubekvm.database import unavailable


def wrapped(error: BaseException) -> BaseException:
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("a library wrapped it") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("error", [
    ServerSelectionTimeoutError("no servers"), AutoReconnect("reset"), NetworkTimeout("timed out"),
    NotPrimaryError("not primary"), ExecutionTimeout("operation exceeded time limit", code=50),
    WTimeoutError("waiting for replication timed out", code=64),
    OperationFailure("Interrupted due to repl state change", code=11602),
    wrapped(AutoReconnect("reset")), ExceptionGroup("a task group", [AutoReconnect("reset")]),
], ids=lambda e: type(e).__name__)
def test_a_database_fault_is_unavailable(error: BaseException) -> None:
    found = unavailable(error)
    assert found is not None and found.code == "UNAVAILABLE"


@pytest.mark.parametrize("error", [
    DuplicateKeyError("E11000 duplicate key", code=11000), OperationFailure("bad query", code=2),
    RuntimeError("a bug"), ExceptionGroup("a task group", [ValueError("a bug")]),
], ids=lambda e: type(e).__name__)
def test_anything_else_stays_a_bug(error: BaseException) -> None:
    assert unavailable(error) is None
