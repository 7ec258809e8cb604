"""A client that goes away mid-request is ordinary (a load run's end, a closed laptop, an agent
restarted): the server notes it on a debug line, not as an ERROR with a traceback.

GraphQL subscriptions: when a client vanishes while strawberry's task for one of its operations
is sending a result, the send raises and strawberry logs "Exception in worker task" with the
traceback, at ERROR. That send races the handler noticing the close, so it cannot be produced
on demand against a server (40 clients resetting mid-flood did not hit it here); the handler's
own hook is exercised instead, with the exceptions such a send raises. A request whose body
never all comes is answered by `kubekvm.boundary.BodyLimit` and a database fault by
`kubekvm.faults.DatabaseFaults` (see test_database_faults.py).
"""

from __future__ import annotations

import logging

import pytest
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected

from kubekvm.faults import client_gone
from kubekvm.graphql.websocket import CheckedTransportWS


class ClientDisconnected(OSError):
    """What uvicorn raises on a send to a websocket that has gone (its own class, by name)."""


@pytest.mark.parametrize("error", [WebSocketDisconnected(), WebSocketDisconnect(1006), ClientDisconnected(),
                                   ConnectionResetError(104, "Connection reset by peer")],
                         ids=lambda e: type(e).__name__)
async def test_a_subscription_whose_client_left_is_no_error(error: Exception,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    assert client_gone(error)
    handler = object.__new__(CheckedTransportWS)  # only its failure hook is exercised
    with caplog.at_level(logging.DEBUG):
        await handler.handle_task_exception(error)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "went away" in caplog.text


async def test_a_real_failure_in_a_subscription_is_still_an_error(caplog: pytest.LogCaptureFixture) -> None:
    handler = object.__new__(CheckedTransportWS)
    with caplog.at_level(logging.DEBUG):
        await handler.handle_task_exception(RuntimeError("a bug"))
    assert [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info], caplog.text


def test_a_client_gone_is_told_from_other_errors() -> None:
    assert client_gone(ClientDisconnect())
    assert not client_gone(RuntimeError("a bug"))
    assert not client_gone(FileNotFoundError("not a connection"))
