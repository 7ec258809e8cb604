"""The ASGI application: GraphQL at /graphql, the pages, static files, the consoles'
websockets (`kubekvm.console`), and the probes.

Middlewares, outermost first: `kubekvm.request_ids.RequestIds` (each request's id, for the
logs), `kubekvm.headers.SecurityHeaders` (CSP and the other security
headers on every answer), `kubekvm.metrics.RequestMetrics` (counts and times every request),
`kubekvm.boundary.OriginCheck` (no websocket or live stream from a
foreign page), `kubekvm.boundary.BodyLimit` (no body over the limit is read), then
`kubekvm.auth.AuthMiddleware`. Every answer of /graphql is GraphQL-shaped JSON with
`extensions.code`, the transport's refusals included (a body that is not one JSON object, a
wrong content type or method: `GraphQLApp`), and so is a failure nothing caught (`internal_error`,
a 500 with code INTERNAL and the security headers).

`create_app` gets an open database connection (the CLI or a test made it) and, on start-up,
starts the event feed, builds the service layer, seeds the default templates and starts the
janitor (`kubekvm.janitor`), the scheduler (`kubekvm.scheduler`: labs' timetables and course
ends) and the usage check (`kubekvm.usage_check`: idle shutdown, hours per student), each active
on whichever replica holds its lease; on shutdown it stops them and hands their leases over.
Every request passes `kubekvm.auth.AuthMiddleware`, which finds its actor; GraphQL and the
pages reach the services only through that actor's operations
(`kubekvm.authorized.Authorized`, each declared with its rule). Outside it,
`kubekvm.faults.DatabaseFaults` answers "unavailable" when the database cannot be reached.
`/readyz` fails while the database does not answer or the event feed is down. `/metrics`
(`kubekvm.metrics`) is Prometheus' view of this replica, for admins and scrape tokens.

First start: while no admin account exists, each replica logs a one-time setup link
(/setup?code=...) that creates the first admin; there is never a default password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cross_web import HTTPException
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from kubekvm import credentials, pages
from kubekvm.access.actors import ActorKind
from kubekvm.auth import AuthMiddleware, actor_of, bearer, serializer
from kubekvm.authorized import Authorized
from kubekvm.boundary import GRAPHQL_PATH, BodyLimit, OriginCheck, allowed_origins, graphql_error, send_refusal
from kubekvm.config import Settings
from kubekvm.console import ConsoleSockets
from kubekvm.database import Connection, describe_uri
from kubekvm.events import ChangeStreamFeed, EventFeed
from kubekvm.faults import DatabaseFaults
from kubekvm.fleet_metrics import LEASE_NAME as METRICS_LEASE
from kubekvm.fleet_metrics import FleetGauges
from kubekvm.graphql.schema import build_schema
from kubekvm.graphql.websocket import CheckedTransportWS
from kubekvm.headers import EXPLORER_POLICY, SecurityHeaders
from kubekvm.janitor import LEASE_NAME, Janitor
from kubekvm.lease import Lease
from kubekvm.metrics import RequestMetrics, metrics_endpoint
from kubekvm.oidc import OpenIdSignIn
from kubekvm.pages.common import Renderer
from kubekvm.pages.images import image_file, published_upload
from kubekvm.quotas import SubscriptionQuotas
from kubekvm.request_ids import RequestIds
from kubekvm.scheduler import LEASE_NAME as SCHEDULER_LEASE
from kubekvm.scheduler import Scheduler
from kubekvm.services import Services
from kubekvm.services.accounts import Accounts
from kubekvm.usage_check import LEASE_NAME as USAGE_LEASE
from kubekvm.usage_check import UsageCheck

log = logging.getLogger(__name__)


# What the transport's refusals (Strawberry's HTTPException) are called in `extensions.code`.
_TRANSPORT_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE",
                    415: "UNSUPPORTED_MEDIA_TYPE"}


class GraphQLApp(GraphQL[dict[str, Any], None]):
    quotas: SubscriptionQuotas
    # The explorer page (templates/graphiql.html) instead of strawberry's, which loads GraphiQL
    # from a CDN: ours is served from static/vendor and works offline.
    renderer: Renderer
    graphql_transport_ws_handler_class = CheckedTransportWS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope=scope, receive=receive)
        try:
            response = await self.run(request)
        except HTTPException as refusal:
            status = 415 if refusal.reason == "Unsupported content type" else refusal.status_code
            reason = ("GraphQL takes a JSON body (Content-Type: application/json)." if status == 415
                      else refusal.reason)
            await send_refusal(send, status=status, message=reason, graphql=True,
                               code=_TRANSPORT_CODES.get(status, "BAD_REQUEST"),
                               headers={"Allow": "GET, POST"} if status == 405 else None)
            return
        await response(scope, receive, send)

    def parse_json(self, data: str | bytes) -> Any:
        """One operation, as a JSON object: a batch (an array) or any other JSON value is refused
        here, with a sentence, rather than failing deeper down."""
        try:
            parsed = self.decode_json(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "The request body is not valid JSON.") from None
        if isinstance(parsed, list):
            raise HTTPException(400, "Batched operations (a JSON array) are not accepted: send one operation "
                                     "per request.")
        if not isinstance(parsed, dict):
            raise HTTPException(400, "The request body must be a JSON object with a `query`.")
        return parsed

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> dict[str, Any]:
        return {"request": request, "response": response, "services": request.state.services,
                "quotas": self.quotas}

    async def on_ws_connect(self, context: dict[str, Any]) -> UnsetType | dict[str, object] | None:
        """A websocket client may authenticate in `connection_init` (`{"authorization": "Bearer
        ..."}`) as well as in the upgrade request's header; a bad token closes the connection."""
        params = context.get("connection_params")
        raw = params.get("authorization") if isinstance(params, dict) else None
        if raw is None:
            return await super().on_ws_connect(context)
        token = bearer(raw) if isinstance(raw, str) else None
        request: WebSocket = context["request"]
        current: Authorized = context["services"]
        if token is None:
            raise ConnectionRejectionError({"message": "authorization must be 'Bearer <token>'"})
        accounts: Accounts = request.app.state.accounts
        actor = await accounts.actor_for_token(token, address=current.actor.address)
        if actor is None:
            raise ConnectionRejectionError({"message": "the bearer token is unknown or revoked"})
        if current.actor.kind != ActorKind.ANONYMOUS and (current.actor.kind, current.actor.name) != (
                actor.kind, actor.name):
            raise ConnectionRejectionError({"message": "the header and connection_init name different identities"})
        context["services"] = Authorized(current.services, accounts, actor)
        return await super().on_ws_connect(context)

    async def render_graphql_ide(self, request: Request) -> Response:
        # The explorer is for people who are signed in; programs POST and need no page.
        if actor_of(request).kind == ActorKind.ANONYMOUS:
            return RedirectResponse("/login?next=/graphql", status_code=303)
        page = self.renderer.page(request, "graphiql.html")
        page.headers["Content-Security-Policy"] = EXPLORER_POLICY
        return page


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Ready: the database answers within a second, and the event feed is following it (a
    replica whose feed is down would serve stale live pages and agent feeds)."""
    connection: Connection = request.app.state.connection
    feed: EventFeed = request.app.state.services.feed
    if not await connection.ping():
        return JSONResponse({"status": "database unreachable"}, status_code=503)
    if not feed.healthy:
        return JSONResponse({"status": "event feed down", "eventStream": feed.mode}, status_code=503)
    return JSONResponse({"status": "ready", "eventStream": feed.mode})


def internal_error(headers: SecurityHeaders) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The answer to a failure nothing else caught (Starlette logs its traceback): on /graphql
    GraphQL-shaped like every answer there, elsewhere a sentence; with the security headers, as
    Starlette sends it from outside every middleware."""

    async def answer(request: Request, error: Exception) -> Response:
        said = "Internal error; the server log has the details."
        response: Response
        if request.url.path == GRAPHQL_PATH:
            response = Response(graphql_error(said, "INTERNAL"), status_code=500, media_type="application/json")
        else:
            response = PlainTextResponse(said, status_code=500)
        headers.add(response.headers, request.scope)
        return response

    return answer


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
        credentials.configure(workers=settings.password_hash_workers,
                              memory_kib=settings.password_hash_memory_kib,
                              iterations=settings.password_hash_iterations)
        services = Services(settings=settings, feed=feed,
                            database_description=database_label or describe_uri(connection.uri))
        accounts = Accounts(settings=settings)
        app.state.services = services
        app.state.accounts = accounts
        app.state.connection = connection
        app.state.settings = settings
        app.state.oidc = OpenIdSignIn(settings.identity)
        app.state.session_serializer = serializer(await accounts.session_secret())
        if settings.seed_templates:
            await services.templates.seed_templates()
        # What a crashed import left in the image store's staging area (a day old: another
        # replica's upload in progress keeps its file fresh).
        swept = await asyncio.to_thread(services.images.store.sweep, older_than_seconds=86400)
        if swept:
            log.info("removed %d stale staged import(s) from the image store", len(swept))
        await accounts.bootstrap_admin()
        code = await accounts.new_setup_code()
        if code is not None:
            # The one place a secret is logged, on purpose: it is how the first admin is made,
            # it works once, and it stops working as soon as any admin exists.
            log.warning("no admin account exists yet: open %s/setup?code=%s to create the first one "
                        "(or run `kubekvm user create NAME --role admin`)", settings.public_url, code)
        janitor = Janitor(services=services, interval_seconds=settings.janitor_interval_seconds,
                          lease=Lease(collection=connection.database["leases"], name=LEASE_NAME,
                                      ttl_seconds=3 * settings.janitor_interval_seconds or 1.0))
        if settings.janitor_interval_seconds > 0:
            janitor.start()
        app.state.shared_metrics = FleetGauges(services=services, lease=Lease(
            collection=connection.database["leases"], name=METRICS_LEASE, ttl_seconds=settings.metrics_lease_seconds))
        scheduler = Scheduler(services=services, interval_seconds=settings.scheduler_interval_seconds,
                              lease=Lease(collection=connection.database["leases"], name=SCHEDULER_LEASE,
                                          ttl_seconds=3 * settings.scheduler_interval_seconds or 1.0))
        if settings.scheduler_interval_seconds > 0:
            scheduler.start()
        usage_check = UsageCheck(services=services, interval_seconds=settings.usage_check_interval_seconds,
                                 lease=Lease(collection=connection.database["leases"], name=USAGE_LEASE,
                                             ttl_seconds=3 * settings.usage_check_interval_seconds or 1.0))
        if settings.usage_check_interval_seconds > 0:
            usage_check.start()
        try:
            yield
        finally:
            if settings.usage_check_interval_seconds > 0:
                await usage_check.stop()
            if settings.scheduler_interval_seconds > 0:
                await scheduler.stop()
            if settings.janitor_interval_seconds > 0:
                await janitor.stop()
            await feed.stop()

    origins = allowed_origins(settings)
    graphql = GraphQLApp(build_schema(settings), subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
                         graphql_ide="graphiql", allowed_origins=sorted(origins),
                         # Strawberry's own cap counts queries in flight too, and answers without
                         # a code: a backstop above ours (kubekvm.quotas), which says why.
                         max_subscriptions_per_connection=settings.graphql_max_subscriptions_per_connection + 10)
    graphql.renderer = Renderer(settings)
    graphql.quotas = SubscriptionQuotas(per_connection=settings.graphql_max_subscriptions_per_connection,
                                        per_user=settings.graphql_max_subscriptions_per_user)
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        # Every method reaches GraphQLApp, which answers the wrong ones in GraphQL's shape.
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", graphql),
        Mount("/static", app=StaticFiles(directory=settings.static_dir, check_dir=False), name="static"),
        *ConsoleSockets(settings=settings).routes(),
        # Host agents pull images here (host token; Range resumes a pull).
        Route("/images/{digest}/file", image_file),
        Route("/machines/{name}/publish/{job}", published_upload, methods=["POST"]),
        *pages.routes(settings=settings),
    ]
    # DatabaseFaults outside the rest: the auth middleware's lookups need the database too.
    # The 500 handler only borrows SecurityHeaders.add (its app is never called).
    headers = SecurityHeaders(graphql, public_url=settings.public_url, hsts_seconds=settings.hsts_seconds)
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: internal_error(headers)},
                     middleware=[
                         Middleware(RequestIds),
                         Middleware(SecurityHeaders, public_url=settings.public_url,
                                    hsts_seconds=settings.hsts_seconds),
                         Middleware(RequestMetrics),
                         Middleware(DatabaseFaults),
                         Middleware(OriginCheck, allowed=origins),
                         Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
                         Middleware(AuthMiddleware),
                     ])
