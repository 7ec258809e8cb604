"""Real servers for tests: SecantusDB, mongoeco and `kubekvm serve`, each a child process on a
free loopback port, stopped when the test session ends.

Every server starts with an admin account "admin" whose API token (`Server.admin_token`) comes
from KUBEKVM_BOOTSTRAP_ADMIN_TOKEN_FILE; `Server.graphql` sends it unless told otherwise
(`token=None`: anonymous; `token=...`: another identity). `Server.user(...)` makes accounts with
passwords, `Server.token_for(...)` signs one in and makes it an API token, and
`Server.host_token(name)` issues the token a `kubekvm-agent --token` needs for host `name`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MONGOECO_PYTHON = ROOT / ".venv-mongoeco" / "bin" / "python"
LOG_DIR = ROOT / "tests" / "artifacts" / "logs"
# The servers' compiled modules, kept between starts: with PYTHONDONTWRITEBYTECODE set (as on
# this machine) every `kubekvm serve` compiled a hundred modules from source again (~0.2 s of CPU).
PYCACHE_DIR = ROOT / "tests" / "artifacts" / "pycache"
# One TLS context for every httpx client of the tests: each new client otherwise loads the CA
# bundle again (~25 ms of CPU), and the tests make thousands of one-off requests (plain HTTP to
# loopback, which never uses it).
TLS = httpx.create_ssl_context()


def share_tls_context() -> None:
    """Make `httpx.get(...)` and every `httpx.Client()` built with the default verification
    reuse `TLS` instead of building a context of its own (what it builds is the same)."""
    import httpx._transports.default as transports

    build = getattr(transports, "create_ssl_context")  # noqa: B009 (not in its __all__)
    if getattr(build, "shared", False):
        return

    def shared(verify: object = True, cert: object = None, trust_env: bool = True) -> object:
        if verify is True and cert is None and not (trust_env and (os.environ.get("SSL_CERT_FILE")
                                                                  or os.environ.get("SSL_CERT_DIR"))):
            return TLS
        return build(verify=verify, cert=cert, trust_env=trust_env)

    shared.shared = True  # type: ignore[attr-defined]
    setattr(transports, "create_ssl_context", shared)  # noqa: B010


# httpx's default is 5 s per request: a loaded CI machine takes longer than that to render a page
# or check a password, and a test failed on it that proved nothing about time.
HTTP_TIMEOUT = httpx.Timeout(60.0)


def generous_http_timeouts() -> None:
    """Give every httpx request and client of the tests `HTTP_TIMEOUT` unless it names its own."""
    for function in (httpx.request, httpx.stream, httpx.get, httpx.options, httpx.head, httpx.post,
                     httpx.put, httpx.patch, httpx.delete, httpx.Client.__init__, httpx.AsyncClient.__init__):
        defaults = getattr(function, "__wrapped__", function).__kwdefaults__  # stream: a context manager
        if defaults is not None and "timeout" in defaults:
            defaults["timeout"] = HTTP_TIMEOUT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_file(name: str) -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return LOG_DIR / f"{name}.log"


def wait_for_mongo(uri: str, *, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"database process exited with {process.returncode}")
        try:
            with MongoClient(uri, serverSelectionTimeoutMS=300) as client:
                client.admin.command("ping")
                return
        except Exception:
            time.sleep(0.1)  # the poll interval
    raise RuntimeError(f"database at {uri} did not answer in {timeout} s")


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_secantus() -> tuple[str, Child]:
    port = free_port()
    log = _log_file(f"secantus-{port}")
    process = subprocess.Popen(
        [str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", ":memory:"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    wait_for_mongo(uri, process=process)
    return uri, Child(process, log)


MONGOECO_SERVER = """
import asyncio, sys
from mongoeco.wire import AsyncMongoEcoProxyServer
async def main():
    async with AsyncMongoEcoProxyServer(host="127.0.0.1", port=int(sys.argv[1])):
        await asyncio.Event().wait()
asyncio.run(main())
"""


def start_mongoeco() -> tuple[str, Child] | None:
    if not MONGOECO_PYTHON.exists():
        return None
    port = free_port()
    log = _log_file(f"mongoeco-{port}")
    process = subprocess.Popen([str(MONGOECO_PYTHON), "-c", MONGOECO_SERVER, str(port)],
                               stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    wait_for_mongo(uri, process=process)
    return uri, Child(process, log)


# A cheap argon2id for test servers (real settings): every made user and every sign-in hashes,
# and at the default cost (over a second each on a loaded CI machine) they were minutes of a run.
CHEAP_PASSWORD_HASHES = {"KUBEKVM_PASSWORD_HASH_MEMORY_KIB": "1024", "KUBEKVM_PASSWORD_HASH_ITERATIONS": "1"}

ADMIN = object()  # `Server.graphql(token=ADMIN)`: the bootstrap admin's token (the default)


@dataclass
class Server:
    """A `kubekvm serve` process."""

    url: str
    database_uri: str
    database_name: str
    child: Child
    env: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""
    passwords: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # The image store this test server got of its own (a temporary directory, removed with it).
    own_image_store: Path | None = None

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def ws_url(self) -> str:
        return self.graphql_url.replace("http://", "ws://")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.child.stop(sig)
        if self.own_image_store is not None:
            shutil.rmtree(self.own_image_store, ignore_errors=True)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def import_image(self, path: Path, *, timeout: float = 120) -> str:
        """Uploads a disk image into the store as an admin's script does; returns its digest."""
        answer = httpx.post(f"{self.url}/images", content=path.read_bytes(), timeout=timeout,
                            headers={**self.admin_headers, "X-Image-Name": path.name})
        assert answer.status_code == 200, answer.text
        digest: str = answer.json()["digest"]
        return digest

    def graphql(self, query: str, variables: dict[str, object] | None = None, *,
                token: object = ADMIN) -> dict[str, object]:
        """POST a GraphQL request as the admin (or `token`; None: anonymously); returns the
        whole response body (data and errors)."""
        chosen = self.admin_token if token is ADMIN else token
        headers = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        response = httpx.post(self.graphql_url, json={"query": query, "variables": variables or {}},
                              headers=headers, timeout=30)
        if response.status_code != 401:
            response.raise_for_status()
        body: dict[str, object] = response.json()
        return body

    def user(self, name: str, role: str = "teacher", *, password: str | None = None) -> str:
        """An account with a password (made once per server); returns the password."""
        if name not in self.passwords:
            password = password or f"pw-{secrets.token_urlsafe(12)}"
            body = self.graphql("mutation($i: UserInput!) { createUser(input: $i) { name } }",
                                {"i": {"name": name, "role": role.upper(), "password": password}})
            assert not body.get("errors"), body
            self.passwords[name] = password
        return self.passwords[name]

    def session(self, name: str, password: str | None = None) -> httpx.Client:
        """An httpx client signed in as `name` through the login page; its CSRF token is in
        `client.headers["X-CSRF-Token"]`, as htmx would send it."""
        client = httpx.Client(base_url=self.url, timeout=30)
        form = client.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf, "the login page has no CSRF token"
        answer = client.post("/login", data={"name": name, "password": password or self.passwords[name],
                                             "csrf_token": csrf.group(1)})
        assert answer.status_code == 303, answer.text
        page = client.get("/account").text
        fresh = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert fresh
        client.headers["X-CSRF-Token"] = fresh.group(1)
        return client

    def token_for(self, name: str, role: str = "teacher") -> str:
        """An API token of `name` (a `role` account made if need be), made as they would: sign
        in, then ask for one."""
        if name not in self.tokens:
            self.user(name, role)
            client = self.session(name)
            try:
                body = client.post("/graphql", json={"query": "mutation { createApiToken(label: \"tests\") { token } }"}).json()
            finally:
                client.close()
            assert not body.get("errors"), body
            self.tokens[name] = body["data"]["createApiToken"]["token"]
        return self.tokens[name]

    def host_token(self, host: str) -> str:
        """A new token for the agent of `host` (`kubekvm-agent --token ...`)."""
        body = self.graphql("mutation($h: String!) { createHostToken(host: $h, label: \"tests\") { token } }",
                            {"h": host})
        assert not body.get("errors"), body
        token: str = body["data"]["createHostToken"]["token"]  # type: ignore[index, call-overload]
        return token


def start_server(*, database_uri: str | None, database_name: str | None = None,
                 env: dict[str, str] | None = None, port: int | None = None,
                 cwd: Path | None = None, timeout: float = 120.0, log_level: str = "warning") -> Server:
    port = port or free_port()
    name = database_name or f"t{uuid.uuid4().hex[:12]}"
    log = _log_file(f"server-{port}")
    # The admin's token, in a file only this test run reads (a second server on the same
    # database finds the admin made and ignores it; the token in the file still works there).
    token_file = LOG_DIR.parent / "tokens" / f"{name}.token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    if not token_file.exists():
        token_file.write_text(f"kk_{secrets.token_urlsafe(32)}")
        token_file.chmod(0o600)
    environment = {**os.environ, "KUBEKVM_DATABASE": name,
                   # A host a module's set-up registered stays ready however slowly the machine
                   # runs the module (a test of host loss sets a shorter one).
                   "KUBEKVM_HOST_TIMEOUT": "3600",
                   "PYTHONUNBUFFERED": "1", "KUBEKVM_BOOTSTRAP_ADMIN_TOKEN_FILE": str(token_file),
                   "PYTHONPYCACHEPREFIX": str(PYCACHE_DIR), **(env or {})}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)  # the cache is outside the checkout
    own_store = None
    if not (env or {}).get("KUBEKVM_IMAGE_STORE"):
        # Never the checkout's ./.kubekvm/images: each test server imports into a store of its own.
        own_store = Path(tempfile.mkdtemp(prefix="kubekvm-images-"))
        environment["KUBEKVM_IMAGE_STORE"] = str(own_store)
    if database_uri is not None:
        environment["MONGODB_URI"] = database_uri
    else:
        environment.pop("MONGODB_URI", None)
    process = subprocess.Popen(
        [str(VENV_BIN / "kubekvm"), "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", log_level],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=environment, cwd=cwd or ROOT,
    )
    server = Server(url=f"http://127.0.0.1:{port}", database_uri=database_uri or "",
                    database_name=name, child=Child(process, log), env=environment,
                    admin_token=token_file.read_text().strip(), own_image_store=own_store)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kubekvm serve exited with {process.returncode}; see {log}")
            try:
                if probe.get(f"{server.url}/readyz").status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # the poll interval
    server.stop()
    raise RuntimeError(f"kubekvm serve did not become ready in {timeout} s; see {log}")
