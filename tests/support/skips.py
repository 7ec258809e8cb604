"""A skipped test must not turn a run green: pytest hooks (tests/conftest.py uses them) that
print every skip with its reason and fail the run on any skip not in the allow-list.

A skip usually means the machine lacks something `scripts/setup test` should have installed
(Chromium, QEMU, Python 3.13 for mongoeco...): the tests then never ran, and a green run would
say nothing. The allow-list (`tests/skip-allowlist.txt`, or the file named by
KUBEKVM_SKIP_ALLOWLIST) holds the few skips that are right on some machines, one a line: a
test id pattern (`*` matches anything, nothing else is special), then why it is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).resolve().parents[1] / "skip-allowlist.txt"


@dataclass(frozen=True)
class Allowed:
    pattern: str
    why: str

    def matches(self, test_id: str) -> bool:
        return re.fullmatch(".*".join(map(re.escape, self.pattern.split("*"))), test_id) is not None


@dataclass(frozen=True)
class Skip:
    test_id: str
    reason: str


def allowlist_path() -> Path:
    return Path(os.environ.get("KUBEKVM_SKIP_ALLOWLIST") or ALLOWLIST)


def read_allowlist(path: Path) -> list[Allowed]:
    """The allow-list's entries; a line without a reason is an error (every entry says why)."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, why = line.partition(" ")
        if not why.strip():
            raise pytest.UsageError(f"{path}:{number}: an allowed skip needs a reason after the test id")
        entries.append(Allowed(pattern, why.strip()))
    return entries


_skips: list[Skip] = []


def _record(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):  # an expected failure is no skip
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    _skips.append(Skip(report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionstart(session: pytest.Session) -> None:
    _skips.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record(report)  # a whole module skipped at import


def _verdicts() -> list[tuple[Skip, Allowed | None]]:
    allowed = read_allowlist(allowlist_path())
    return [(skip, next((a for a in allowed if a.matches(skip.test_id)), None)) for skip in _skips]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.OK and any(entry is None for _, entry in _verdicts()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    verdicts = _verdicts()
    if not verdicts:
        return
    terminalreporter.section("skips")
    for skip, entry in verdicts:
        verdict = f"allowed: {entry.why}" if entry else "NOT ALLOWED"
        terminalreporter.line(f"{skip.test_id}: {skip.reason} [{verdict}]")
    refused = sum(entry is None for _, entry in verdicts)
    if refused:
        terminalreporter.line(
            f"{refused} skip(s) not in {allowlist_path()}: the run fails, because a test that did "
            "not run proves nothing (install what the reason names: scripts/setup test)", red=True)
