"""The server page: which replica answered and what it says of itself (version, database, live
streams), and for admins the labs nobody has used lately.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.models import utcnow
from kubekvm.pages.common import Renderer


class ServerPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def server(self, request: Request) -> Response:
        services = services_for(request)
        return self.renderer.page(request, "server.html", {
            "section": "server", "info": await services.server_info(),
            "live_streams": services.feed.subscriber_count, "now": utcnow(),
            # Admins: the labs nobody has used for KUBEKVM_LAB_UNUSED_DAYS (issue 17).
            "unused": await services.unused_labs() if services.actor.is_admin else None,
            "unused_days": services.settings.lab_unused_days,
        })
