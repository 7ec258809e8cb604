"""Secrets: password hashes (argon2id) and bearer tokens (random, kept as sha256).

Passwords are low-entropy, so they get a slow, memory-hard hash (argon2-cffi's argon2id
defaults). Tokens are 256 random bits: a fast sha256 is enough to make a stolen database
useless for signing in, and lets a request's token be found by an indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kubekvm.errors import ValidationFailed

_hasher = PasswordHasher()  # argon2id, the library's recommended parameters
PASSWORD_MIN_LENGTH = 10
PASSWORD_MAX_LENGTH = 1024
USER_TOKEN_PREFIX = "kk_"  # noqa: S105 (a prefix, not a secret)
HOST_TOKEN_PREFIX = "kkh_"  # noqa: S105

# Verifying against this when the account does not exist (or has no password) makes a wrong
# name take as long as a wrong password: timing tells nothing about which accounts exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def check_password_rules(password: str, *, field: str = "password") -> str:
    if len(password) < PASSWORD_MIN_LENGTH:
        raise ValidationFailed(field, f"A password has at least {PASSWORD_MIN_LENGTH} characters.")
    if len(password) > PASSWORD_MAX_LENGTH:
        raise ValidationFailed(field, f"A password has at most {PASSWORD_MAX_LENGTH} characters.")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_rules(password))


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
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
