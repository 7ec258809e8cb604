"""The shape of the source: no module grows past ~400 lines without saying why at its top."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 420  # "about 400"
REASON = "Longer than 400 lines:"


def test_no_long_module_without_a_reason_at_its_top() -> None:
    files = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "kubekvm_demo").rglob("*.py")])
    assert len(files) > 50
    unexplained = []
    for path in files:
        text = path.read_text()
        if text.count("\n") > LIMIT:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if REASON not in docstring:
                unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained, f"say why at the top ({REASON!r} in the module docstring), or split: {unexplained}"


def test_every_module_says_its_part() -> None:
    """Every module opens with a docstring (its part of the design)."""
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "src").rglob("*.py"))
               if not ast.get_docstring(ast.parse(p.read_text())) and p.read_text().strip()]
    assert not missing


BANNER = re.compile(r"^\s*# -{5,}", re.MULTILINE)
# Files still waiting for their split (each must still have a banner: a split file leaves this list).
BANNERS_LEFT: set[str] = set()


def test_no_section_banners() -> None:
    """A file that needs section banners (`# ----- title`) wants to be two files."""
    files = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "kubekvm_demo").rglob("*.py"),
                    *(ROOT / "benchmarks").rglob("*.py")])
    bannered = {str(p.relative_to(ROOT)) for p in files if BANNER.search(p.read_text())}
    assert bannered <= BANNERS_LEFT, f"split these into modules of one noun each: {sorted(bannered - BANNERS_LEFT)}"
    assert BANNERS_LEFT <= bannered, f"no banners left: take them off BANNERS_LEFT: {sorted(BANNERS_LEFT - bannered)}"
