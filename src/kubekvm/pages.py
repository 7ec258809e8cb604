"""The teachers' pages (htmx over Jinja2). Placeholder until the pages land."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from kubekvm.config import Settings


async def home(request: Request) -> Response:
    return RedirectResponse("/graphql")


def routes(*, settings: Settings) -> list[BaseRoute]:
    return [Route("/", home)]
