"""Tests leave nothing behind (issue 15): a test session that leaves a process, a `kubekvm-`
domain or a scratch folder of its own fails, and what it left is removed; `scripts/check-leftovers`
does the same for a whole command (CI: `make test`). Both are tried here on small runs that leak
on purpose, next to one that does not."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT
from tests.support.qemu import ensure_libvirtd

# The leaking process is not going to end by itself: no need to give it the usual grace.
QUICK = {"KUBEKVM_LEFTOVER_GRACE": "1"}
CONFTEST = 'pytest_plugins = ["tests.support.leftovers_plugin"]\n'

LEAKY = '''
import subprocess
from pathlib import Path

from tests.support.leftovers import session_root

HERE = Path(__file__).parent


def test_starts_a_process_and_forgets_it():
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (HERE / "pid").write_text(str(process.pid))


def test_leaves_a_scratch_folder():
    (session_root() / "forgotten").mkdir()


def test_defines_a_domain_and_forgets_it():
    xml = (HERE / "domain.xml").read_text().replace("ROOT", str(session_root()))
    (HERE / "defined.xml").write_text(xml)
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "define", str(HERE / "defined.xml")], check=True,
                   capture_output=True, timeout=30)
'''

TIDY = '''
import shutil
import subprocess

import pytest

from tests.support.leftovers import session_root


@pytest.fixture(scope="session")
def daemon():
    # Stopped when the session's fixtures are torn down, which is before the check.
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def test_cleans_up_after_itself(daemon):
    process = subprocess.Popen(["sleep", "600"])
    folder = session_root() / "used"
    folder.mkdir()
    process.kill()
    process.wait()
    shutil.rmtree(folder)
'''

DOMAIN = """<domain type='qemu'><name>NAME</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='ROOT/disk.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def run_pytest(folder: Path, tests: str, **files: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    for name, text in files.items():
        (folder / name.replace("_", ".")).write_text(text)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_sample.py").write_text(tests)
    (folder / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **QUICK}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def defined(name: str) -> bool:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "dominfo", name], capture_output=True,
                          timeout=30, check=False).returncode == 0


def test_a_session_that_leaves_things_behind_fails_and_they_are_removed(tmp_path: Path) -> None:
    ensure_libvirtd()
    name = f"kubekvm-leftover-{secrets.token_hex(3)}"
    folder = tmp_path / "leaky"
    try:
        result = run_pytest(folder, LEAKY, domain_xml=DOMAIN.replace("NAME", name))
        pid = int((folder / "pid").read_text())
        assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
        assert "3 passed" in result.stdout
        assert "left behind" in result.stdout
        assert f"process {pid}: sleep 600" in result.stdout
        assert f"domain {name}" in result.stdout
        assert "/forgotten" in result.stdout
        assert "3 thing(s) this session made were still there" in result.stdout
        # ... and none of them is there any more.
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split()[2]
        assert not defined(name)
    finally:  # this test leaves nothing behind either, whatever happened above
        subprocess.run(["virsh", "-q", "-c", "qemu:///system", "undefine", name], capture_output=True,
                       timeout=30, check=False)


def test_a_session_that_cleans_up_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path / "tidy", TIDY)
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "left behind" not in result.stdout


def test_check_leftovers_fails_a_command_that_leaves_a_process_or_a_folder() -> None:
    script = str(ROOT / "scripts" / "check-leftovers")
    leaky = subprocess.run(
        [script, "sh", "-c", 'sleep 600 & echo $! > /dev/null; '
                             'mkdir -p "/var/tmp/kubekvm-tests/session-check.$KUBEKVM_LEFTOVER_TAG/x"'],
        capture_output=True, text=True, timeout=120, env={**os.environ, **QUICK})
    assert leaky.returncode == 1, leaky.stdout + leaky.stderr
    assert "left behind: process" in leaky.stdout and "sleep 600" in leaky.stdout
    assert "left behind: folder /var/tmp/kubekvm-tests/session-check." in leaky.stdout
    tidy = subprocess.run([script, "true"], capture_output=True, text=True, timeout=120)
    assert tidy.returncode == 0, tidy.stdout + tidy.stderr
    assert "left no process, domain, scratch folder or change to the checkout" in tidy.stdout


# A benchmark-like command: a child in a session of its own (as the benchmarks start agents),
# a domain defined on its scratch folder, a file in it; then it hangs, ignoring SIGTERM.
HANGING = """
import os, signal, subprocess, sys, time
scratch = sys.argv[1]
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "600"], start_new_session=True)
xml = os.path.join(scratch, "domain.xml")
open(xml, "w").write(sys.argv[2])
subprocess.run(["virsh", "-q", "-c", "qemu:///system", "define", xml], check=True, capture_output=True)
print(f"ready; child {child.pid}", flush=True)
time.sleep(600)  # hangs: what the test's timeout is about
"""


def test_a_contained_command_that_overruns_leaves_nothing(tmp_path: Path) -> None:
    """The fault of issue 15: a timed-out benchmark run left its servers, agents and domains."""
    from tests.support.contained import run_contained
    from tests.support.qemu import scratch_dir

    ensure_libvirtd()
    scratch = scratch_dir("contained")
    name = f"kubekvm-contained-{secrets.token_hex(3)}"
    domain = DOMAIN.replace("NAME", name).replace("ROOT", str(scratch))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            run_contained([sys.executable, "-c", HANGING, str(scratch), domain], timeout=12,
                          log=tmp_path / "hanging.log", scratch=scratch, grace=1)
        log = (tmp_path / "hanging.log").read_text()
        assert log.startswith("ready; child "), log  # it got as far as hanging
        child = int(log.split()[-1])
        assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_bytes().split()[2] == b"Z"
        assert not defined(name)
        assert not scratch.exists()
    finally:
        subprocess.run(["virsh", "-q", "-c", "qemu:///system", "undefine", name], capture_output=True,
                       timeout=30, check=False)
