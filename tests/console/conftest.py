"""Fixtures of the console tests: the end-to-end fixtures (libvirtd, the tiny-linux guest,
`kubekvm-agent` processes) shared with tests/e2e, and Debian's Chromium for one module at a time
(tests/pages' fixture: a synchronous Playwright must not outlive its module, or no asyncio test
can run after it).
"""

from __future__ import annotations

from tests.e2e.conftest import agents, libvirtd, site, tiny_linux
from tests.pages.conftest import browser

__all__ = ["agents", "browser", "libvirtd", "site", "tiny_linux"]
