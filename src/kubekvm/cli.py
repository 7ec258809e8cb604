"""`kubekvm`: run the server, export the GraphQL schema, manage accounts and tokens.

`kubekvm serve` opens the database before the web server starts, so a missing or unreachable
database is one clear line and exit code 1, not a traceback from inside uvicorn. Once serving,
it keeps the embedded database alive (`EmbeddedDatabase.supervise`) for as long as it runs.

`kubekvm image import FILE` inspects a disk image and adds it to the image store (the same path as
the Images page's upload: `kubekvm.services.images`); `kubekvm image list` lists the store.
`kubekvm user create NAME --role ROLE` (password prompted, or read from standard input when
it is not a terminal), `kubekvm token create USER`, `kubekvm token scrape` (Prometheus'),
`kubekvm host token HOST` and `kubekvm template create` work on the database directly, whether
or not a server runs: MONGODB_URI, or the embedded database of `<data dir>/db` — the running
server's (SecantusDB is a database server; the command is a second client of it, and the server
hears the change through its change stream like any other write), or, with no server running,
one started for the command.
A token is printed once, on standard output, and stored only as its sha256.
`kubekvm import-legacy --from URI --owner TEACHER [--dry-run]` makes labs of the 2019
application's deployments (`kubekvm.legacy_import`), reading its database and never writing it.
`kubekvm sign-in check [--user NAME]` tries the sign-in settings against the directory and the
OpenID providers (`kubekvm.identity_check`), without a database.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import ipaddress
import logging
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn

from kubekvm import identity_check, legacy_import, logs
from kubekvm.access.actors import Actor, ActorKind
from kubekvm.app import create_app
from kubekvm.authorized import Authorized
from kubekvm.config import Settings
from kubekvm.database import DatabaseTimeouts, DatabaseUnavailable, connect, describe_uri
from kubekvm.embedded import EmbeddedDatabase, running_embedded
from kubekvm.errors import KubeKVMError
from kubekvm.events import EventFeed
from kubekvm.faults import DeniedHandshakeLog
from kubekvm.identity_config import IdentitySettings
from kubekvm.image_models import Image
from kubekvm.models import Role
from kubekvm.services import Services
from kubekvm.services.accounts import Accounts


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
    serve.add_argument("--forwarded-allow-ips", default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
                       help="proxies whose X-Forwarded-For/-Proto are believed (comma-separated, or *)")
    user = commands.add_parser("user", help="manage accounts").add_subparsers(dest="action", required=True)
    create_user = user.add_parser("create", help="create an account (password prompted or read from stdin)")
    create_user.add_argument("name")
    create_user.add_argument("--role", choices=[r.value for r in Role], required=True)
    create_user.add_argument("--no-password", action="store_true",
                             help="no usable password yet (set it later, or send a set-password link)")
    token = commands.add_parser("token", help="personal API tokens").add_subparsers(dest="action", required=True)
    create_token = token.add_parser("create", help="print a new API token for a user")
    create_token.add_argument("name")
    create_token.add_argument("--label", default="")
    scrape_token = token.add_parser("scrape", help="print a new token for Prometheus (reads /metrics only)")
    scrape_token.add_argument("--label", default="prometheus")
    host = commands.add_parser("host", help="host agents").add_subparsers(dest="action", required=True)
    host_token = host.add_parser("token", help="print a new token for a host's agent")
    host_token.add_argument("name")
    host_token.add_argument("--label", default="")
    template = commands.add_parser("template", help="VM templates").add_subparsers(dest="action", required=True)
    create_template = template.add_parser("create", help="add a template (its base image must be on the hosts)")
    create_template.add_argument("name")
    create_template.add_argument("--image", required=True, help="file name of the base qcow2 on each host")
    create_template.add_argument("--title")
    create_template.add_argument("--description")
    create_template.add_argument("--os", choices=["linux", "windows"], default="linux")
    create_template.add_argument("--vcpus", type=int, default=1)
    create_template.add_argument("--memory-mib", type=int, default=1024)
    create_template.add_argument("--disk-gib", type=int, default=10)
    image = commands.add_parser("image", help="the image store").add_subparsers(dest="action", required=True)
    import_image = image.add_parser("import", help="inspect a qcow2 or raw disk image and add it to the store")
    import_image.add_argument("file", type=Path)
    import_image.add_argument("--format", choices=["qcow2", "raw"],
                              help="the file's format (default: from its name: .qcow2, .raw, .img)")
    image.add_parser("list", help="the images in the store")
    publish = template.add_parser("publish", help="publish an image of the store as the template's next version")
    publish.add_argument("name")
    publish.add_argument("digest", help="sha256:<hex>, as `kubekvm image import` printed it")
    publish.add_argument("--note", default="")
    publish.add_argument("--if-new", action="store_true",
                         help="do nothing when the newest version is this image already (scripts run it again)")
    legacy = commands.add_parser("import-legacy", help="make labs of the 2019 application's deployments")
    legacy.add_argument("--from", dest="source", required=True, metavar="MONGODB_URI",
                        help="the 2019 database (only read; its name in the URI, or --source-database)")
    legacy.add_argument("--source-database", help="the 2019 database's name, if not in the URI (default kubekvm)")
    legacy.add_argument("--owner", required=True, help="the teacher (or admin) the labs are for")
    legacy.add_argument("--dry-run", action="store_true", help="report what would be done, write nothing")
    sign_in = commands.add_parser("sign-in", help="sign-in from outside (OpenID Connect, LDAP)").add_subparsers(
        dest="action", required=True)
    sign_in_check = sign_in.add_parser("check", help="try the sign-in settings against the directory and providers")
    sign_in_check.add_argument("--user", help="also look this username up in the directory: its groups and role")
    args = parser.parse_args(argv)
    if args.command == "sign-in":
        good, lines = asyncio.run(identity_check.check(IdentitySettings.from_environment(), user=args.user))
        print("\n".join(lines))
        sys.exit(0 if good else 1)
    if args.command == "serve":
        settings = Settings.from_environment()
        logs.configure(format=settings.log_format, level=args.log_level)
        embedded = None
        if settings.mongodb_uri is None:
            embedded = EmbeddedDatabase(storage=(settings.data_dir / "db").resolve())
        if not settings.public_url:
            shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
            settings = dataclasses.replace(settings, public_url=f"http://{shown}:{args.port}")
        if not settings.advertise_url:
            settings = dataclasses.replace(settings, advertise_url=advertised_url(args.host, args.port))
        try:
            code = asyncio.run(_serve(settings=settings, embedded=embedded, host=args.host, port=args.port,
                                      log_level=args.log_level, forwarded=args.forwarded_allow_ips))
        except KeyboardInterrupt:
            code = 0
        finally:
            # Here rather than inside the event loop: a second Ctrl-C cannot skip it.
            if embedded is not None:
                embedded.stop()
        sys.exit(code)
    if args.command == "export-schema":
        sys.exit(_export(args.out, check=args.check))
    if args.command == "user":
        password = None if args.no_password else _read_password()
        sys.exit(_admin_task(lambda s: s.create_user(name=args.name, role=Role(args.role), password=password),
                             lambda _: f"user {args.name} ({args.role}) created"))
    if args.command == "token" and args.action == "scrape":
        sys.exit(_admin_task(lambda s: s.create_scrape_token(label=args.label),
                             lambda made: str(made[1])))  # type: ignore[index]
    if args.command == "token":
        sys.exit(_admin_task(lambda s: _user_token(s, args.name, args.label), lambda token: str(token)))
    if args.command == "template" and args.action == "publish":
        sys.exit(_admin_task(lambda s: _publish(s, args.name, args.digest, note=args.note, if_new=args.if_new),
                             lambda said: str(said)))
    if args.command == "template":
        sys.exit(_admin_task(lambda s: s.create_template(
            name=args.name, title=args.title, description=args.description, os=args.os, image=args.image,
            vcpus=args.vcpus, memory_mib=args.memory_mib, disk_gib=args.disk_gib),
            lambda _: f"template {args.name} created"))
    if args.command == "image":
        sys.exit(_image_command(args))
    if args.command == "host":
        sys.exit(_admin_task(lambda s: s.create_host_token(host=args.name, label=args.label),
                             lambda made: str(made[1])))  # type: ignore[index]
    if args.command == "import-legacy":
        sys.exit(_admin_task(lambda s: legacy_import.run(s, source_uri=args.source, owner=args.owner,
                                                         source_database=args.source_database, dry_run=args.dry_run),
                             lambda outcome: outcome.report()))  # type: ignore[attr-defined]


def _image_command(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _admin_task(lambda s: s.list_images(), lambda images: "\n".join(
            f"{i.digest}  {i.size:>14}  {i.name}" for i in images))  # type: ignore[attr-defined]
    source: Path = args.file
    if not source.is_file():
        print(f"kubekvm: {source} is not a file", file=sys.stderr)
        return 1
    return _admin_task(lambda s: s.import_image(name=source.name, path=source.resolve(), format=args.format),
                       lambda made: _imported(*made))  # type: ignore[misc]


async def _publish(services: Authorized, name: str, digest: str, *, note: str, if_new: bool) -> str:
    template = await services.get_template(name)
    newest = template.versions[-1] if template.versions else None
    if if_new and newest is not None and newest.digest == digest:
        return f"template {name}: v{newest.number} is this image already"
    published = await services.publish_template_version(name, digest=digest, note=note)
    return f"template {name}: v{published.versions[-1].number} published"


def _imported(image: Image, new: bool) -> str:
    return f"{'imported' if new else 'already in the store'}: {image.digest} ({image.name})"


def advertised_url(host: str, port: int) -> str:
    """Where host agents reach this replica for a console when KUBEKVM_ADVERTISE_URL is unset:
    the address it listens on, or, listening on every address, the one its hostname resolves
    to (a pod's IP in Kubernetes, though the manifests set the variable from the pod's IP)."""
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        found = socket.getaddrinfo(socket.gethostname(), port, type=socket.SOCK_STREAM)
    except OSError:
        found = []
    addresses = [str(info[4][0]) for info in found if not ipaddress.ip_address(info[4][0]).is_loopback]
    if not addresses:
        return f"http://127.0.0.1:{port}"
    first = addresses[0]
    return f"http://[{first}]:{port}" if ":" in first else f"http://{first}:{port}"


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise SystemExit("kubekvm: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


async def _user_token(services: Authorized, name: str, label: str) -> str:
    user = await services.accounts.get_user(name)
    as_user = Authorized(services.services, services.accounts,
                         Actor(kind=ActorKind.USER, name=user.name, role=user.role, address="cli"))
    _, token = await as_user.create_token(label=label or "cli")
    return token


def _admin_task(task: Callable[[Authorized], Awaitable[object]], said: Callable[[object], str]) -> int:
    """Run one account task on the database as the operator at the console (an admin: whoever
    can reach the database can do all this anyway), audited like any other change."""
    settings = Settings.from_environment()
    embedded = None
    uri = settings.mongodb_uri
    if uri is None:
        storage = (settings.data_dir / "db").resolve()
        uri = running_embedded(storage)  # a server runs on it: use its database, alongside it
        if uri is None:
            embedded = EmbeddedDatabase(storage=storage)

    async def run() -> int:
        nonlocal uri
        if embedded is not None:
            uri = await embedded.start()
        assert uri is not None
        connection = await connect(uri, database=settings.database_name, timeouts=timeouts(settings))
        try:
            services = Services(settings=settings, feed=EventFeed(), database_description="cli")
            operator = Actor(kind=ActorKind.USER, name="cli", role=Role.ADMIN, address="console")
            result = await task(Authorized(services, Accounts(settings=settings), operator))
            print(said(result))
            return 0
        except KubeKVMError as error:
            print(f"kubekvm: {error.message}", file=sys.stderr)
            return 1
        finally:
            await connection.close()

    try:
        return asyncio.run(run())
    except DatabaseUnavailable as error:
        print(f"kubekvm: {error}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()


def timeouts(settings: Settings) -> DatabaseTimeouts:
    return DatabaseTimeouts(operation=settings.db_timeout_seconds,
                            server_selection=settings.db_server_selection_seconds,
                            write_concern=settings.db_write_timeout_seconds)


async def _serve(*, settings: Settings, embedded: EmbeddedDatabase | None, host: str, port: int,
                 log_level: str, forwarded: str = "127.0.0.1") -> int:
    try:
        if embedded is not None:
            uri = await embedded.start()
            label = f"embedded SecantusDB ({settings.data_dir / 'db'})"
        else:
            assert settings.mongodb_uri is not None
            uri, label = settings.mongodb_uri, describe_uri(settings.mongodb_uri)
        connection = await connect(uri, database=settings.database_name, timeouts=timeouts(settings),
                                   embedded=embedded)
    except DatabaseUnavailable as error:
        print(f"kubekvm: {error}", file=sys.stderr)
        return 1
    # A killed embedded database comes back by itself (same port, same files); meanwhile
    # requests are answered UNAVAILABLE and the client reconnects once it answers again.
    supervisor = None
    if embedded is not None:
        supervisor = asyncio.create_task(embedded.supervise(), name="kubekvm-embedded-database")
    try:
        app = create_app(settings=settings, connection=connection, database_label=label)
        # The pages' live-update streams never end by themselves: on shutdown uvicorn would wait
        # for them forever, so after a short grace it cancels them (browsers reconnect elsewhere).
        # log_config=None: uvicorn's lines go through kubekvm.logs like every other (its own
        # configuration would give them handlers and a format of their own).
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None,
                                ws="websockets-sansio",
                                lifespan="on", proxy_headers=True, forwarded_allow_ips=forwarded,
                                timeout_graceful_shutdown=3,
                                # A bigger websocket message closes its socket (1009) unread.
                                ws_max_size=settings.websocket_max_message_bytes,
                                # No compression: deflating each small event for each of thousands
                                # of subscribers cost more CPU than its bytes, and every
                                # connection kept a zlib state of its own (memory per subscriber).
                                ws_per_message_deflate=False)
        # Access-log lines carry query strings: one-time codes of setup and set-password links
        # must not outlive their use in a log file.
        logging.getLogger("uvicorn.access").addFilter(_RedactCodes())
        logging.getLogger("uvicorn.error").addFilter(DeniedHandshakeLog())
        server = uvicorn.Server(config)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        print(f"KubeKVM is starting at http://{shown}:{port}/  (database: {label}; GraphQL: /graphql)",
              flush=True)
        await server.serve()
        return 0
    finally:
        if supervisor is not None:
            supervisor.cancel()
        await connection.close()


class _RedactCodes(logging.Filter):
    _CODE = re.compile(r"((?:code|token)=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._CODE.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


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
