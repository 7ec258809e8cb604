"""The Operations page (admins): the fleet at a glance, what an on-call sysadmin looks at first.

  GET /operations     hosts ready and unreachable, labs by phase, machines by state, the event
                      feed, failures of the last hour (`kubekvm.services.overview`)

The same figures Prometheus scrapes from `/metrics` and the Grafana dashboard plots
(deploy/grafana), for a deployment without them or a first look; the page says which figures
are this replica's own.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.models import utcnow
from kubekvm.pages.common import Renderer


class OperationsPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def overview(self, request: Request) -> Response:
        return self.renderer.page(request, "operations.html", {
            "section": "operations", "o": await services_for(request).overview(), "now": utcnow(),
        })
