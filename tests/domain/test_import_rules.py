"""The layering, as a test: the rule modules and the domain types import no database, web or
libvirt library (neither directly, nor under TYPE_CHECKING, nor through what they import), and
the agent and the server share no code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PURE = ["kubekvm.domain", "kubekvm.lifecycle", "kubekvm.access", "kubekvm.access.actors", "kubekvm.access.roles",
        "kubekvm.access.objects", "kubekvm.access.passwords", "kubekvm.access.facts", "kubekvm.placement", "kubekvm.validation",
        "kubekvm.legacy",
        "kubekvm.image_rules",
        "kubekvm.timetable", "kubekvm.timetable_text",
        "kubekvm.roster", "kubekvm.identity", "kubekvm.idle", "kubekvm.usage", "kubekvm.stewardship"]
FORBIDDEN = {"pymongo", "bson", "motor", "beanie", "pydantic", "starlette", "strawberry", "libvirt", "jinja2",
             "uvicorn", "gql"}
# Modules of this project that (directly or not) import one of the above.
FORBIDDEN_OWN = {"kubekvm.models", "kubekvm.database", "kubekvm.services", "kubekvm.authorized"}


def imported_names(path: Path) -> set[str]:
    """Every module an `import` or `from … import` in `path` names, wherever it stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def module_files(module: str) -> list[Path]:
    """A module's file, or every file of a package."""
    package = SRC / module.replace(".", "/")
    return sorted(package.rglob("*.py")) if package.is_dir() else [package.with_suffix(".py")]


@pytest.mark.parametrize("module", PURE)
def test_a_rule_module_names_no_database_web_or_libvirt_library(module: str) -> None:
    files = module_files(module)
    assert all(f.exists() for f in files)
    names = set().union(*(imported_names(f) for f in files))
    bad = sorted(n for n in names if top(n) in FORBIDDEN or n in FORBIDDEN_OWN
                 or any(n.startswith(f"{own}.") for own in FORBIDDEN_OWN))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", PURE)
def test_a_rule_module_loads_no_database_web_or_libvirt_library(module: str) -> None:
    """What importing it really loads, in a fresh interpreter (catches an indirect import)."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(SRC)})
    loaded = set(json.loads(done.stdout))
    bad = sorted(n for n in loaded if top(n) in FORBIDDEN or n in FORBIDDEN_OWN)
    assert not bad, f"importing {module} loads {bad}"


@pytest.mark.parametrize(("package", "other"), [("agent", "kubekvm"), ("kubekvm", "agent")])
def test_the_agent_and_the_server_share_no_code(package: str, other: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files
    crossing = {str(f.relative_to(SRC)): sorted(n for n in imported_names(f) if top(n) == other) for f in files}
    assert not {f: n for f, n in crossing.items() if n}


def test_the_import_check_sees_an_import_under_type_checking(tmp_path: Path) -> None:
    """The checker itself: an import hidden under TYPE_CHECKING or in a function still counts."""
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kubekvm.models import Machine\n"
                      "def f() -> None:\n    import pymongo\n")
    assert {"kubekvm.models", "pymongo"} <= imported_names(sample)


def test_the_shipped_packages_hold_no_test_guest_builder() -> None:
    """The tiny-linux builder (it runs `apt-get download`) is the demo's and the tests'
    (`kubekvm_demo`, outside src/): nothing in the wheel or the images fetches packages."""
    fetching = sorted(str(f.relative_to(SRC)) for f in SRC.rglob("*.py") if "apt-get" in f.read_text())
    assert not fetching
    assert not (SRC / "agent" / "tiny_linux.py").exists()
