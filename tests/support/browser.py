"""One Chromium for the whole test session (a pytest plugin: tests/conftest.py loads it), shared by
every browser test (tests/pages, tests/identity, tests/security, tests/console): Debian's
Chromium from `scripts/setup test`, never a downloaded one. Each test gets contexts of its own
(cookies, storage, cache), so sharing the browser process shares nothing a test could see, and
the launch (Playwright's driver and Chromium: seconds of CPU each) is paid once, not per module.

Playwright's synchronous API runs its event loop in a greenlet and marks that loop as the main
thread's running loop for as long as it is started; meanwhile no asyncio test (pytest-asyncio
runs one loop for the session) and no `asyncio.run` could start. So the session-scoped
`chromium` keeps Playwright and the browser started, and the function-scoped `browser` lends
them to one test: it puts the running-loop mark back before the test and takes it off after,
so between browser tests the thread has no running loop, as if Playwright were stopped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

CHROMIUM = os.environ.get("KUBEKVM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class SharedChromium:
    """Playwright and one Chromium, started at the first test that asks and stopped at the
    session's end; lent to one test at a time (`lend`)."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def lend(self) -> Iterator[Browser]:
        """The browser, with Playwright's loop marked running for as long as the block lasts."""
        self._resume()
        try:
            if self._browser is None:
                self._browser = self._started().chromium.launch(executable_path=CHROMIUM, headless=True,
                                                                args=CHROMIUM_ARGS)
            yield self._browser
        finally:
            self._suspend()

    def close(self) -> None:
        if self._playwright is None:
            return
        self._resume()
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            # Stops the driver; its loop ends, which takes the running-loop mark off for good.
            self._playwright.stop()
            self._playwright = self._browser = self._loop = None

    def _started(self) -> Playwright:
        if self._playwright is None:
            from playwright.sync_api import expect, sync_playwright

            # Playwright's `expect` gives up after 5 s by default: a loaded machine takes longer
            # to push a live update. A deadline costs nothing when the page is on time.
            expect.set_options(timeout=30_000)
            self._playwright = sync_playwright().start()
            self._loop = asyncio.get_running_loop()  # Playwright's, marked running by start()
        return self._playwright

    def _resume(self) -> None:
        if self._loop is not None:
            asyncio.events._set_running_loop(self._loop)

    def _suspend(self) -> None:
        if self._loop is not None:
            asyncio.events._set_running_loop(None)


@pytest.fixture(scope="session")
def chromium() -> Iterator[SharedChromium]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/setup test")
    shared = SharedChromium()
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture
def browser(chromium: SharedChromium) -> Iterator[Browser]:
    """The session's Chromium, for this test (its contexts are the test's to close)."""
    with chromium.lend() as started:
        yield started
