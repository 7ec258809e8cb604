"""The server's and the agent's log lines share one schema (`kubekvm.logs`, `agent.logs`: twins,
since the agent and the server share no code): the same keys in JSON, the same text line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from agent import logs as agent_logs
from kubekvm import logs as server_logs


def _line(formatter: logging.Formatter, *, fail: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("kubekvm.tests.schema")
    log.addHandler(handler)
    log.propagate = False
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-1", lab="d1", machine="d1-1"):
            if fail:
                try:
                    raise ValueError("boom")
                except ValueError:
                    log.exception("failed %s", "here")
            else:
                log.warning("made %s", "d1-1")
    finally:
        log.removeHandler(handler)
    return stream.getvalue().strip()


def test_json_lines_have_one_schema() -> None:
    server = json.loads(_line(server_logs.formatter(format="json")))
    agent = json.loads(_line(agent_logs.formatter(format="json")))
    assert set(server) == set(agent) == {"ts", "level", "logger", "event", "request_id", "lab", "machine"}
    assert server["event"] == agent["event"] == "made d1-1"
    assert server["level"] == "warning" and server["ts"].endswith("Z")
    failed = json.loads(_line(server_logs.formatter(format="json"), fail=True))
    assert "ValueError: boom" in failed["exception"]
    assert set(failed) == set(json.loads(_line(agent_logs.formatter(format="json"), fail=True)))


def test_text_lines_carry_the_context_too() -> None:
    server = _line(server_logs.formatter(format="text"))
    agent = _line(agent_logs.formatter(format="text"))
    assert server.split(" ", 1)[1] == agent.split(" ", 1)[1]  # all but the time stamp
    assert "WARNING kubekvm.tests.schema: made d1-1  [request_id=r-1 lab=d1 machine=d1-1]" in server
