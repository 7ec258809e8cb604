"""A skipped test must not turn a run green: pytest, run on small test files with the project's
skip hooks (`tests.support.skips`), fails on a skip the allow-list does not name and prints
every skip's reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT
from tests.support.skips import ALLOWLIST, Allowed, read_allowlist

CONFTEST = "from tests.support.skips import (pytest_collectreport, pytest_runtest_logreport,\n" \
           "    pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary)\n"


def run_pytest(tmp_path: Path, tests: str, allowlist: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(tests)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "allowed.txt").write_text(allowlist)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBEKVM_SKIP_ALLOWLIST": str(tmp_path / "allowed.txt"),
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # only pytest and these hooks: a quicker start
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


SKIPPING = """
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_needs_a_tool():
    pytest.skip("the frobnicator is not installed")
"""


def test_a_skip_not_in_the_allowlist_fails_the_run(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPPING)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "test_sample.py::test_needs_a_tool: the frobnicator is not installed [NOT ALLOWED]" in result.stdout
    assert "1 skip(s) not in" in result.stdout


def test_an_allowed_skip_keeps_the_run_green_and_is_still_shown(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPPING, "# comment\n\ntest_sample.py::test_needs_* no frobnicator here\n")
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "the frobnicator is not installed [allowed: no frobnicator here]" in result.stdout


def test_a_module_skipped_at_import_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text("def test_runs():\n    pass\n")
    result = run_pytest(tmp_path, "import pytest\npytest.importorskip('no_such_module_here')\n\n"
                                  "def test_never_runs():\n    pass\n")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout
    assert "no_such_module_here" in result.stdout and "[NOT ALLOWED]" in result.stdout


def test_expected_failures_and_passes_are_not_skips(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "import pytest\n\n@pytest.mark.xfail(reason='known')\n"
                                  "def test_known():\n    assert False\n\ndef test_fine():\n    pass\n")
    assert result.returncode == pytest.ExitCode.OK, result.stdout
    assert "NOT ALLOWED" not in result.stdout and "skips" not in result.stdout


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SKIPPING, "test_sample.py::test_needs_a_tool\n")
    assert result.returncode != pytest.ExitCode.OK
    assert "needs a reason" in result.stdout + result.stderr


def test_patterns_match_whole_ids_and_only_star_is_special() -> None:
    entry = Allowed("tests/x.py::test_a[*]", "why")
    assert entry.matches("tests/x.py::test_a[1-2]")
    assert not entry.matches("tests/x.py::test_ab")
    assert not entry.matches("other/tests/x.py::test_a[1]")


def test_the_projects_allowlist_is_short_and_names_real_tests() -> None:
    entries = read_allowlist(ALLOWLIST)
    assert 0 < len(entries) <= 5, "keep the allow-list short: each entry is a test that may not run"
    for entry in entries:
        path, _, name = entry.pattern.partition("::")
        source = ROOT / path
        assert source.is_file(), f"{entry.pattern}: no such file"
        assert f"def {name.split('[')[0].rstrip('*')}" in source.read_text(), f"{entry.pattern}: no such test"
