"""Fixtures of the console tests: the end-to-end fixtures (libvirtd, the tiny-linux guest,
`kubekvm-agent` processes) shared with tests/e2e, and the session's one Chromium, lent to one
test at a time (`browser`, from `tests.support.browser`, as tests/pages use it).
"""

from __future__ import annotations

from tests.e2e.conftest import agents, libvirtd, site, tiny_linux
from tests.pages.conftest import browser

__all__ = ["agents", "browser", "libvirtd", "site", "tiny_linux"]
