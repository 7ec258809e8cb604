"""Fixtures of the console tests: the end-to-end fixtures (libvirtd, the tiny-linux guest,
`kubekvm-agent` processes) shared with tests/e2e, and Debian's Chromium for one module at a time.

Playwright's synchronous API leaves an event loop marked running on the main thread for as long
as it is started, and no asyncio test can run after it: so Chromium here lives only as long as
the module that uses it (tests/pages keeps its own for the session).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import agents, libvirtd, site, tiny_linux
from tests.pages.conftest import CHROMIUM, CHROMIUM_ARGS

__all__ = ["agents", "browser", "libvirtd", "site", "tiny_linux"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/setup test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
