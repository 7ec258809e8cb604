"""The admins' audit log page: every audited call, filtered by actor, action, target and outcome,
a page at a time (`services.audit`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import validation
from kubekvm.auth import services_for
from kubekvm.pages.common import Renderer

AUDIT_PAGE = 100


class AuditPages:
    """The audit log, for admins."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def audit(self, request: Request) -> Response:
        services = services_for(request)
        query = request.query_params
        filters = {key: query.get(key, "").strip() for key in ("actor", "action", "target", "outcome")}
        offset = validation.offset(query.get("offset"))
        page = await services.audit_log(actor=filters["actor"] or None, action=filters["action"] or None,
                                        target=filters["target"] or None, outcome=filters["outcome"] or None,
                                        offset=offset, limit=AUDIT_PAGE)
        shown = urlencode({k: v for k, v in filters.items() if v})
        return self.renderer.page(request, "accounts/audit.html", {
            "section": "audit", "entries": page.items, "total": page.total, "filters": filters,
            "offset": offset, "page_size": AUDIT_PAGE, "query": shown,
            "now": datetime.now(UTC),
        })
