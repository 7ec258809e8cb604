"""Secrets: password hashes (argon2id) and bearer tokens (random, kept as sha256).

Passwords are low-entropy, so they get a slow, memory-hard hash (argon2-cffi's argon2id
defaults: about half a second and 64 MiB each on a small server). That work never runs on the
event loop: `hash_password` and `verify_password` are coroutines that hand it to a small pool
of worker threads (argon2-cffi releases the GIL while it hashes), so thirty students signing
in at once queue for the pool while every live page, console and agent link of the replica
goes on being served. The pool's size (`KUBEKVM_PASSWORD_HASH_WORKERS`, default 2) bounds the
CPU and memory sign-ins may take; `configure` sets it at server start. Off the loop is not
enough on a small host: the worker threads (and the threads libargon2 starts for each hash,
which inherit their priority) would take the CPU from the loop's thread as an equal, and a
burst of sign-ins still stalled every request for seconds. So the workers run at the lowest
priority (`HASH_NICENESS`): the loop is served first, sign-ins get the CPU left over.
The hash's cost (`KUBEKVM_PASSWORD_HASH_MEMORY_KIB`, `..._ITERATIONS`) is set there too; a
stored hash of other parameters still verifies, and is re-hashed at its next sign-in.

Tokens are 256 random bits: a fast sha256 is enough to make a stolen database useless for
signing in, and lets a request's token be found by an indexed lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kubekvm.errors import ValidationFailed

_hasher = PasswordHasher()  # argon2id, the library's recommended parameters
PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 1024
USER_TOKEN_PREFIX = "kk_"  # noqa: S105 (a prefix, not a secret)
HOST_TOKEN_PREFIX = "kkh_"  # noqa: S105
SCRAPE_TOKEN_PREFIX = "kkm_"  # noqa: S105
DEFAULT_HASH_WORKERS = 2

# The hashing threads' nice value: the lowest priority, so the event loop never waits for them.
HASH_NICENESS = 19
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_workers = DEFAULT_HASH_WORKERS
# Verifying against this when the account does not exist (or has no password) makes a wrong
# name take as long as a wrong password: timing tells nothing about which accounts exist.
# Made on first need, in a worker (never at import, never on the loop).
_dummy_hash: str | None = None


def configure(*, workers: int, memory_kib: int | None = None, iterations: int | None = None) -> None:
    """The number of threads that hash passwords (takes effect for a pool not yet started), and
    argon2id's memory (KiB) and passes per hash (None: the library's recommended ones)."""
    global _workers, _hasher, _dummy_hash
    if workers < 1:
        raise ValueError("at least one password-hashing worker")
    _workers = workers
    if memory_kib is not None or iterations is not None:
        default = PasswordHasher()
        _hasher = PasswordHasher(memory_cost=memory_kib or default.memory_cost,
                                 time_cost=iterations or default.time_cost)
        _dummy_hash = None  # a dummy of the same cost, or a missing account would answer faster


def _yield_the_cpu() -> None:
    # Linux keeps a nice value per thread: this lowers only the worker's own (and what it starts).
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_workers, thread_name_prefix="password-hash",
                                       initializer=_yield_the_cpu)
        return _pool


def check_password_rules(password: str, *, field: str = "password") -> str:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationFailed(field, f"A password has at least {PASSWORD_MIN_LENGTH} characters.")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationFailed(field, f"A password has at most {PASSWORD_MAX_LENGTH} characters.")
    return password


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:  # two workers racing make two equally good dummies
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(16))
    return _dummy_hash


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _dummy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    """The argon2id hash of `password` (after the length rules), computed in the pool."""
    check_password_rules(password)
    return await rehash_password(password)


async def rehash_password(password: str) -> str:
    """A new hash, at the configured cost, of a password that has just verified: it is not
    checked against today's length rules (it was chosen under older ones, or imported)."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), _hasher.hash, password)


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored` (None: no password, always False, taking as long as
    a real check), computed in the pool. Over-long input is refused before any hashing."""
    if len(password) > PASSWORD_MAX_LENGTH:
        return False
    return await asyncio.get_running_loop().run_in_executor(_executor(), _verify, stored, password)


def needs_rehash(stored: str) -> bool:
    # Cheap: it reads the parameters written in the hash.
    return _hasher.check_needs_rehash(stored)


def token_hash(token: str) -> str:
    # surrogatepass: a token from JSON may hold a lone surrogate; it must match nothing, not crash.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(prefix: str = USER_TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def new_code() -> str:
    """A one-time code for a link (first-start setup, set-password)."""
    return secrets.token_urlsafe(24)


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))
