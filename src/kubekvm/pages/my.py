"""A student's "My VMs" page: their machine of each lab they are on the roster of
(`kubekvm.pages.fragments.my_rows`; kept live by the same fragments the lab pages use).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.pages.common import Renderer
from kubekvm.pages.fragments import my_rows


class MyPages:
    """A student's own machines."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def my(self, request: Request) -> Response:
        services = services_for(request)
        return self.renderer.page(request, "my/list.html", {
            "section": "my", "rows": await my_rows(services), "oob": False,
        })
