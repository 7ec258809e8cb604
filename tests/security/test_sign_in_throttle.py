"""Attacks with the sign-in throttle (issue 11, item 7): lockout used as a weapon.

Against a real server, from chosen client addresses (see `tests.security.signin`): someone
guessing a teacher's password from other addresses must not keep the teacher out, and a class
behind one NAT address mistyping must not keep out a teacher (or a student) who types it right.
The attackers' own further tries are refused, and their refusals write no session.
The rules and numbers are `kubekvm.throttle`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.security.signin import browser, session_count, try_sign_in, user_doc
from tests.support.processes import Server


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server]) -> Server:
    # A slow-down long enough that a loaded machine's slow sign-in cannot outlast it: the tests
    # check who is held back, not how long the default second lasts.
    return start_kubekvm(env={"KUBEKVM_LOGIN_SLOW_SECONDS": "60"})


def _fail(server: Server, name: str, address: str, attempts: int = 1) -> list[int]:
    with browser(server, address=address) as client:
        return [try_sign_in(client, name, f"wrong-guess-{i}").status_code for i in range(attempts)]


def _sign_in(server: Server, name: str, address: str) -> int:
    with browser(server, address=address) as client:
        return try_sign_in(client, name, server.passwords[name]).status_code


def test_an_attacker_elsewhere_does_not_lock_the_owner_out(server: Server) -> None:
    password = server.user("thr-owner", "teacher")
    hashed = user_doc(server, "thr-owner")["password_hash"]
    attackers = ["198.51.100.1", "198.51.100.2"]
    # Two addresses guess five times each: ten failures of the account, enough to lock it for
    # everyone under the old rules (and to slow it down under the new ones).
    answers = [_fail(server, "thr-owner", address, 5) for address in attackers]
    assert answers == [[401] * 5] * 2
    # Each attacking address is locked out of this account, even with the right password: no
    # session is made for it.
    for address in attackers:
        with browser(server, address=address) as client:
            refused = try_sign_in(client, "thr-owner", password)
        assert refused.status_code == 429 and "Try again in" in refused.text
        assert int(refused.headers["Retry-After"]) > 0
    # An address that failed once is slowed down now that the account is under attack.
    assert _fail(server, "thr-owner", "198.51.100.9", 2) == [401, 429]
    assert session_count(server, "thr-owner") == 0
    # The owner, from their own address, signs in at once.
    assert _sign_in(server, "thr-owner", "203.0.113.7") == 303
    assert session_count(server, "thr-owner") == 1
    assert user_doc(server, "thr-owner")["password_hash"] == hashed
    # Signing in from an address does not exempt it from its own lockout: someone at the
    # owner's address guessing five times is locked out there too.
    assert _fail(server, "thr-owner", "203.0.113.7", 6) == [401] * 5 + [429]


def test_a_class_behind_one_nat_address_mistyping_does_not_lock_out_the_teacher(server: Server) -> None:
    nat = "192.0.2.44"
    server.user("thr-teacher", "teacher")
    server.user("thr-newcomer", "student")
    assert _sign_in(server, "thr-teacher", nat) == 303  # the teacher signed in here last week
    # Thirty students each mistype once, at once, from the classroom's one address.
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _fail(server, f"thr-student-{i:02}", nat), range(30)))
    assert answers == [[401]] * 30
    assert _sign_in(server, "thr-teacher", nat) == 303
    # And a student who never signed in from here before is not refused either.
    assert _sign_in(server, "thr-newcomer", nat) == 303


def test_at_the_address_limit_only_accounts_known_at_that_address_get_in(
        start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm(env={"KUBEKVM_LOGIN_MAX_FAILURES_PER_ADDRESS": "10"})
    try:
        nat = "192.0.2.45"
        server.user("lim-teacher", "teacher")
        server.user("lim-stranger", "teacher")
        assert _sign_in(server, "lim-teacher", nat) == 303
        # Someone sprays one password over ten accounts from the shared address.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: _fail(server, f"lim-sprayed-{i}", nat), range(10)))
        assert answers == [[401]] * 10
        # The address has reached its limit: an account not known here waits (no session made) ...
        assert _sign_in(server, "lim-stranger", nat) == 429
        assert session_count(server, "lim-stranger") == 0
        # ... from there only: elsewhere it signs in.
        assert _sign_in(server, "lim-stranger", "192.0.2.99") == 303
        # An account that signed in from this address before is never refused for its neighbours.
        assert _sign_in(server, "lim-teacher", nat) == 303
    finally:
        server.stop()
