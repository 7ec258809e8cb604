"""The plain endpoint P3 compares GraphQL with: the same labs, as JSON, from the same database.

One Starlette route, ``GET /labs`` (``?owner=NAME``: that teacher's), returns the first 1,000
labs by name with their phase and machine counts, read with the same Beanie models
(``kubekvm.models.Deployment``) and counts (``kubekvm.services.labs.Labs.counts_of``: as stored
with each lab) the GraphQL resolver uses. There is no GraphQL, no authentication and no total
count: it is the floor a JSON API on this stack could reach. It runs in its own uvicorn process, configured like
``kubekvm serve`` (uvloop and httptools where installed):

    python -m benchmarks.plain_app --port 8100 --mongodb-uri mongodb://... --database NAME
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kubekvm.config import Settings
from kubekvm.database import connect
from kubekvm.events import EventFeed
from kubekvm.models import Deployment
from kubekvm.services import Services

LIMIT = 1000


def create_app(*, mongodb_uri: str, database: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connection = await connect(mongodb_uri, database=database)
        # Only for counts_of, which reads the machines collection (for labs never counted) and nothing else.
        app.state.services = Services(settings=Settings(), feed=EventFeed(), database_description="plain")
        try:
            yield
        finally:
            await connection.close()

    async def labs(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        owner = request.query_params.get("owner")
        found = await Deployment.find({"owner": owner} if owner else {}).sort("name").limit(LIMIT).to_list()
        counts = await services.labs.counts_of(found)
        return JSONResponse({"items": [
            {"name": d.name, "phase": d.phase.name, "running": counts[d.name][0], "machineCount": counts[d.name][1]}
            for d in found
        ]})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/labs", labs), Route("/healthz", healthz)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongodb-uri", required=True)
    parser.add_argument("--database", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(mongodb_uri=args.mongodb_uri, database=args.database), host="127.0.0.1",
                port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
