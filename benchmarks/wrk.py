"""Runs ``wrk`` (Debian's HTTP load generator) against one URL and reads its report.

A Lua script sets the method, body and headers (GraphQL needs a POST with a JSON body and a
bearer token); the script file is private to the run and deleted afterwards. Only loopback
URLs are accepted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


def _script(method: str, body: str | None, headers: dict[str, str]) -> str:
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    return "\n".join(lines) + "\n"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not match:
        raise ValueError(f"unreadable wrk duration {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if not rps or not total:
        raise ValueError(f"unreadable wrk output:\n{output}")
    result["requests_per_s"] = float(rps.group(1))
    result["requests"] = int(total.group(1))
    result["latency_s"] = {f"p{q}": _seconds(v) for q, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(v) for v in errors.groups()) if errors else 0
    return result


def run(url: str, *, connections: int, seconds: int, work: Path, method: str = "GET", body: str | None = None,
        headers: dict[str, str] | None = None, threads: int = 1) -> dict[str, Any]:
    if urlparse(url).hostname != "127.0.0.1":
        raise ValueError(f"benchmarks send traffic to 127.0.0.1 only, not {url}")
    script = work / f"wrk-{connections}-{method.lower()}.lua"
    script.write_text(_script(method, body, headers or {}))
    script.chmod(0o600)
    try:
        completed = subprocess.run(
            ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds}s",
             "--timeout", "30s", "--latency", "-s", str(script), url],
            capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        script.unlink(missing_ok=True)
    return {"connections": connections, "seconds": seconds, **parse(completed.stdout)}
