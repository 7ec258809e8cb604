"""The ASGI application: GraphQL at /graphql, the pages, static files, and the probes.

`create_app` gets an open database connection (the CLI or a test made it) and, on start-up,
starts the event feed, builds the service layer and seeds the default templates.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from kubekvm import pages
from kubekvm.config import Settings
from kubekvm.database import Connection, describe_uri
from kubekvm.events import ChangeStreamFeed, EventFeed
from kubekvm.graphql.schema import schema
from kubekvm.services import Services

log = logging.getLogger(__name__)


class GraphQLApp(GraphQL[dict[str, Any], None]):
    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> dict[str, Any]:
        return {"request": request, "response": response, "services": request.app.state.services}


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    connection: Connection = request.app.state.connection
    if await connection.ping():
        return JSONResponse({"status": "ready", "eventStream": request.app.state.services.feed.mode})
    return JSONResponse({"status": "database unreachable"}, status_code=503)


def create_app(*, settings: Settings, connection: Connection, database_label: str | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        feed: EventFeed
        if connection.change_streams:
            feed = ChangeStreamFeed(database=connection.database)
        else:
            feed = EventFeed()
            log.warning(
                "the database has no change streams: events reach this server process only; "
                "running several server replicas needs MongoDB as a replica set"
            )
        await feed.start()
        services = Services(settings=settings, feed=feed,
                            database_description=database_label or describe_uri(connection.uri))
        app.state.services = services
        app.state.connection = connection
        app.state.settings = settings
        if settings.seed_templates:
            await services.seed_templates()
        try:
            yield
        finally:
            await feed.stop()

    graphql = GraphQLApp(schema, subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
                         graphql_ide="graphiql")
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Mount("/static", app=StaticFiles(directory=settings.static_dir, check_dir=False), name="static"),
        *pages.routes(settings=settings),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
