"""The agent's log lines: the server's schema (`kubekvm.logs`), as JSON objects or as text.

`KUBEKVM_LOG_FORMAT=json` (or `--log-format json`) writes one JSON object per line with the
server's keys (ts, level, logger, event, and where known request_id, lab, machine, host,
exception); `text`, the default, a line a person reads. The reconciler binds the machine, its
lab and the request id its assignment carries (the request that last changed the machine) to
the logging context of each step, so the server's and the agent's lines for one click share
one id. The agent shares no code with the server (a rule of the house:
`tests/domain/test_import_rules.py`), so this module is the twin of `kubekvm.logs`; a test
checks that both write the same keys.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# The context keys, in the order a text line shows them.
CONTEXT_KEYS = ("request_id", "actor", "lab", "machine", "host")


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
