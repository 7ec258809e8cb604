"""Log lines: one schema for the server and the agent, as JSON objects or as text for people.

Every module logs through the standard library (`logging.getLogger(__name__)`), uvicorn too;
`configure` puts one `structlog` formatter on the root handler, so all of it comes out the same
way. `KUBEKVM_LOG_FORMAT=json` writes one JSON object per line with these keys:

    ts (ISO 8601, UTC), level, logger, event (the message), and, where known,
    request_id, actor ("user:ana", "host:kvm-1"), lab, machine, host, exception

`text` (the default, for `make run`) writes the same as a line a person reads, the context
keys after the message. The context comes from `contextvars`: `kubekvm.request_ids` binds the
request id (taken from `X-Request-ID` or made) for the whole request, `kubekvm.auth` the actor,
and each declared operation (`kubekvm.services.rules`) the lab, machine or host it acts on.
A change to a machine stores the request id (`current_request_id`) with it; its host agent
gets it with the assignment and logs its own steps under it (`agent.logs`, the same schema:
the agent shares no code with the server, by rule, so that module is its twin), so one grep
for an id follows a machine from a click to its boot.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# The context keys, in the order a text line shows them.
CONTEXT_KEYS = ("request_id", "actor", "lab", "machine", "host")


def current_request_id() -> str | None:
    """The request id of the request (or agent step) running now, if any."""
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def _rename(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["logger"] = event.pop("logger", None) or event.pop("_logger_name", "")
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def _text(_logger: Any, _method: str, event: dict[str, Any]) -> str:
    context = " ".join(f"{key}={event[key]}" for key in CONTEXT_KEYS if event.get(key))
    line = f"{event.get('ts', '')} {str(event.get('level', '')).upper()} {event.get('logger', '')}: " \
           f"{event.get('event', '')}"
    if context:
        line += f"  [{context}]"
    if event.get("exception"):
        line += "\n" + str(event["exception"])
    return line


def formatter(*, format: str) -> logging.Formatter:
    """The one formatter of every log line (stdlib's and uvicorn's records included)."""
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, _rename,
                        structlog.processors.format_exc_info]
    renderer: Any = structlog.processors.JSONRenderer() if format == "json" else _text
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=chain, processors=[*final, renderer])


def configure(*, format: str, level: str) -> None:
    """Every log line of this process through `formatter`, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(format=format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to the root (their own handlers would print a second line).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
