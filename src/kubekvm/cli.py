"""`kubekvm`: run the server, export the GraphQL schema.

`kubekvm serve` opens the database before the web server starts, so a missing or unreachable
database is one clear line and exit code 1, not a traceback from inside uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

import uvicorn

from kubekvm.app import create_app
from kubekvm.config import Settings
from kubekvm.database import DatabaseUnavailable, EmbeddedDatabase, connect, describe_uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kubekvm", description="KubeKVM control plane")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (embedded database unless MONGODB_URI is set)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default=os.environ.get("KUBEKVM_LOG_LEVEL", "info").lower())
    export = commands.add_parser("export-schema", help="write the GraphQL SDL")
    export.add_argument("--out", type=Path, default=Path("schema.graphql"))
    export.add_argument("--check", action="store_true", help="fail if the file differs")
    args = parser.parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = Settings.from_environment()
        embedded = None
        if settings.mongodb_uri is None:
            embedded = EmbeddedDatabase(storage=(settings.data_dir / "db").resolve())
        try:
            code = asyncio.run(_serve(settings=settings, embedded=embedded, host=args.host, port=args.port,
                                      log_level=args.log_level))
        except KeyboardInterrupt:
            code = 0
        finally:
            # Here rather than inside the event loop: a second Ctrl-C cannot skip it.
            if embedded is not None:
                embedded.stop()
        sys.exit(code)
    if args.command == "export-schema":
        sys.exit(_export(args.out, check=args.check))


async def _serve(*, settings: Settings, embedded: EmbeddedDatabase | None, host: str, port: int,
                 log_level: str) -> int:
    try:
        if embedded is not None:
            uri = await embedded.start()
            label = f"embedded SecantusDB ({settings.data_dir / 'db'})"
        else:
            assert settings.mongodb_uri is not None
            uri, label = settings.mongodb_uri, describe_uri(settings.mongodb_uri)
        connection = await connect(uri, database=settings.database_name)
    except DatabaseUnavailable as error:
        print(f"kubekvm: {error}", file=sys.stderr)
        return 1
    try:
        app = create_app(settings=settings, connection=connection, database_label=label)
        # The pages' live-update streams never end by themselves: on shutdown uvicorn would wait
        # for them forever, so after a short grace it cancels them (browsers reconnect elsewhere).
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="websockets-sansio",
                                lifespan="on", proxy_headers=True, timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        print(f"KubeKVM is starting at http://{shown}:{port}/  (database: {label}; GraphQL: /graphql)",
              flush=True)
        await server.serve()
        return 0
    finally:
        await connection.close()


def _export(out: Path, *, check: bool) -> int:
    from kubekvm.graphql.schema import sdl

    text = sdl()
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date: run `kubekvm export-schema --out {out}`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    return 0
