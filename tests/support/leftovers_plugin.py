"""The pytest plugin of `tests.support.leftovers` (tests/conftest.py loads it): it marks the
session at its start, so every process it starts carries the mark, and fails the session when,
after every fixture has been torn down, something it made is still there — a process, a libvirt
domain or storage pool, a scratch folder. That is removed too, so the next run starts clean."""

from __future__ import annotations

import pytest

from tests.support.leftovers import Verdict, session_id, sweep_session

_verdict = Verdict()


def pytest_configure(config: pytest.Config) -> None:
    session_id()  # before any fixture starts a process, so every child carries the mark


# trylast: the innermost wrapper, so what follows its yield runs after every plain implementation
# (pytest's own, which tears the fixtures down) and before the terminal reporter's summary.
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> object:
    result = yield
    global _verdict
    _verdict = sweep_session()
    if _verdict.lines() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = _verdict.lines()
    if not lines:
        return
    terminalreporter.section("left behind")
    for line in lines:
        terminalreporter.line(line, red=True)
    terminalreporter.line(f"{len(lines)} thing(s) this session made were still there after its fixtures ended "
                          "(removed now): the run fails, because tests must clean up on every way out", red=True)
