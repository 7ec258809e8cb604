"""Results: one JSON file per benchmark plus ``summary.json``, and the table printed at the end.

Every benchmark returns a dict with ``benchmark`` (its title), ``how`` (how it was measured),
``figures`` (the headline numbers) and ``targets`` (each with its value, limit and whether it
was met); whatever else it returns (per-run details) goes into its file unchanged.
``summary.json`` gathers the figures and targets of all of them with the machine they ran on;
a run of only some of them (``--only``) keeps the latest entries of the others.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

FILES = {"P1": "provision", "P2": "status_latency", "P3": "api_throughput", "P4": "agent_scale",
         "P5": "watched", "P6": "image_pull"}


def write(out: Path, results: dict[str, dict[str, Any]], context: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for key, result in results.items():
        (out / f"{FILES[key]}.json").write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    path = out / "summary.json"
    # A run of some benchmarks only (--only) keeps the others' latest entries, each with the
    # run it came from.
    kept: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError):
            earlier = json.loads(path.read_text())
            kept = {key: {"run_started": earlier.get("started"), "run_load_average": [
                        earlier.get("load_average_at_start"), earlier.get("load_average_at_end")], **entry}
                    for key, entry in earlier["benchmarks"].items() if key not in results and key in FILES}
    summary = {
        **context,
        "benchmarks": {
            **kept,
            **{key: {"benchmark": r.get("benchmark", key), "file": f"{FILES[key]}.json", "how": r.get("how", ""),
                     "run_started": context.get("started"), "run_load_average": [
                         context.get("load_average_at_start"), context.get("load_average_at_end")],
                     "figures": r.get("figures", {}),
                     "targets": r.get("targets", []), **({"error": r["error"]} if "error" in r else {})}
               for key, r in results.items()},
        },
    }
    summary["benchmarks"] = dict(sorted(summary["benchmarks"].items()))
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(results: dict[str, dict[str, Any]], *, judged: bool = True) -> str:
    """The figures and targets; with ``judged`` False (the quick plan, whose sizes are not the
    targets' sizes) targets are shown but not called met or missed."""
    rows: list[tuple[str, str, str, str]] = [("benchmark", "figure", "value", "target")]
    for key, result in results.items():
        title = f"{key} {result.get('benchmark', '').split(' ', 1)[-1]}".strip()
        if "error" in result:
            rows.append((title, "ERROR", result["error"][:60], ""))
            continue
        for name, value in result.get("figures", {}).items():
            rows.append((title, name, _number(value), ""))
            title = ""
        for target in result.get("targets", []):
            sign = "<=" if target["better"] == "lower" else ">="
            verdict = ("met" if target["met"] else "MISSED") if judged else "(not judged: quick)"
            limit = f"{sign} {_number(target['limit'])} {verdict}"
            rows.append((title, target["name"], _number(target["value"]), limit))
            title = ""
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]
