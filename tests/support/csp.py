"""Seeing Content-Security-Policy violations in Chromium: `RECORD` is a script to add to a
browser context (`context.add_init_script(RECORD)`; Playwright runs it in every document,
outside the page's policy), and `violations(tab)` reads what it recorded in the tab's document."""

from __future__ import annotations

from typing import Any

RECORD = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
    window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


def violations(tab: Any) -> list[str]:
    return [f"{tab.url}: {v}" for v in tab.evaluate("window.__violations || []")]
