"""A directory or an OpenID provider that accepts a connection and then never answers: the
sign-in is "unavailable" within its timeout, and the event loop keeps serving meanwhile (the
directory's calls run in threads, the provider's requests are asynchronous)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from kubekvm.directory import Directory
from kubekvm.errors import Unavailable
from kubekvm.identity_config import IdentitySettings, LdapDirectory, OidcProvider
from kubekvm.oidc import OpenIdSignIn


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        listener.close()
        for connection in held:
            connection.close()
        thread.join(timeout=5)


async def _unavailable_while_the_loop_runs(call: Callable[[], Awaitable[object]]) -> tuple[float, int]:
    """How long `call` took to be refused as Unavailable, and how often a 10 ms ticker ran meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)  # the ticker's period: what it measures is that it runs at all
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable):
            await call()
        return time.monotonic() - started, ticks
    finally:
        task.cancel()


async def test_a_silent_directory_is_unavailable_within_its_timeout_off_the_loop(silent_port: int) -> None:
    directory = Directory(LdapDirectory(url=f"ldap://127.0.0.1:{silent_port}", user_base="ou=people,dc=x",
                                        timeout_seconds=1))
    took, ticks = await _unavailable_while_the_loop_runs(lambda: directory.authenticate("sam", "sam-pw"))
    assert took < 10, f"the directory's timeout did not hold: {took:.1f} s"
    assert ticks >= 10, f"the event loop was blocked while the directory did not answer ({ticks} ticks)"


async def test_a_silent_openid_provider_is_unavailable_within_its_timeout_off_the_loop(silent_port: int) -> None:
    issuer = f"http://127.0.0.1:{silent_port}"
    sign_in = OpenIdSignIn(IdentitySettings(
        oidc=(OidcProvider(name="slow", title="Slow", issuer=issuer, client_id="kubekvm", client_secret="s"),),
        oidc_timeout_seconds=1))
    took, ticks = await _unavailable_while_the_loop_runs(lambda: sign_in.discover("slow"))
    assert took < 10, f"the provider's timeout did not hold: {took:.1f} s"
    assert ticks >= 10, f"the event loop was blocked while the provider did not answer ({ticks} ticks)"
