"""Sign-in throttling: the rules, as plain functions of a few counters and the time.

Three counters are kept for a sign-in attempt (`kubekvm.services.sessions` stores them in MongoDB with
atomic updates, so they hold whichever replica the next try reaches; nothing here imports a
database):

- the pair (account, address): its failures, its last failure, and when this account last
  signed in from this address (`good_at`);
- the account, from every address: its failures;
- the address, for every account: its failures and its last failure.

The rules (numbers are the defaults; `Rules` carries the configured ones):

1. **Lockout per (account, address).** After 5 failures of one account from one address
   within the 15-minute window, that address waits 60 s before trying that account again,
   doubling with each further failure, at most 15 minutes. Someone guessing from address A
   locks out only themselves: the account's owner at address B is not touched.
2. **Slow-down per account, never a lockout.** After 10 failures of an account from all
   addresses together, an address that has itself failed on the account (and has no recent
   good sign-in of it) waits 1 s after its last failure, doubling with every 5 further
   failures of the account, at most 30 s. An address that has not failed on the account is
   never held back, so no number of failures elsewhere keeps the owner out; a spread-out
   attack gets one try per address per delay.
3. **Per-address limit that a classroom behind one NAT address survives.** After 100 failures
   from one address (any accounts) within the window, that address waits 60 s after its last
   failure — except for an account that signed in successfully from that address within the
   last 30 days, which is never refused for its classmates' typing. Thirty students each
   mistyping once are far below the limit, and a teacher who has signed in there before gets
   in even when they are not.

A throttled attempt is refused before its password is looked at (no hashing is spent on it)
and does not count as a failure. IPv6 addresses are counted per /64, the block one machine is
usually given.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

KNOWN_GOOD = timedelta(days=30)


@dataclass(frozen=True, kw_only=True)
class Rules:
    pair_failures: int = 5
    lockout_seconds: float = 60.0
    max_lockout_seconds: float = 900.0
    account_slow_after: int = 10
    slow_seconds: float = 1.0
    slow_doubles_every: int = 5
    max_slow_seconds: float = 30.0
    address_failures: int = 100
    window_seconds: float = 900.0
    known_good: timedelta = KNOWN_GOOD


@dataclass(frozen=True, kw_only=True)
class Counter:
    """One stored counter, as read (all zero/None when there is none)."""

    failures: int = 0
    window_start: datetime | None = None
    last_failure: datetime | None = None
    good_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Keys:
    pair: str
    account: str
    address: str

    @property
    def all(self) -> tuple[str, str, str]:
        return self.pair, self.account, self.address


def address_block(address: str) -> str:
    """The unit an address is counted in: an IPv4 address, or the /64 of an IPv6 one."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def keys(name: str, address: str) -> Keys:
    account = name.strip().lower()[:80]
    block = address_block(address)
    return Keys(pair=f"pair:{account}|{block}", account=f"user:{account}", address=f"addr:{block}")


def failures(counter: Counter, *, rules: Rules, now: datetime) -> int:
    """The failures that still count: none once the counter's window is over."""
    if counter.window_start is None or now - counter.window_start > timedelta(seconds=rules.window_seconds):
        return 0
    return counter.failures


def known_good(pair: Counter, *, rules: Rules, now: datetime) -> bool:
    return pair.good_at is not None and now - pair.good_at <= rules.known_good


def _left(since: datetime | None, seconds: float, now: datetime) -> float:
    if since is None:
        return 0.0
    return max((since + timedelta(seconds=seconds) - now).total_seconds(), 0.0)


def wait_seconds(*, rules: Rules, now: datetime, pair: Counter, account: Counter, address: Counter) -> int:
    """How many seconds this (account, address) must wait before its next attempt; 0: go on."""
    waits = [0.0]
    trusted = known_good(pair, rules=rules, now=now)
    pair_failed = failures(pair, rules=rules, now=now)
    if pair_failed >= rules.pair_failures:
        lockout = min(rules.lockout_seconds * 2 ** min(pair_failed - rules.pair_failures, 20),
                      rules.max_lockout_seconds)
        waits.append(_left(pair.last_failure, lockout, now))
    account_failed = failures(account, rules=rules, now=now)
    if account_failed >= rules.account_slow_after and pair_failed and not trusted:
        steps = (account_failed - rules.account_slow_after) // max(rules.slow_doubles_every, 1)
        delay = min(rules.slow_seconds * 2 ** min(steps, 20), rules.max_slow_seconds)
        waits.append(_left(pair.last_failure, delay, now))
    if failures(address, rules=rules, now=now) >= rules.address_failures and not trusted:
        waits.append(_left(address.last_failure, rules.lockout_seconds, now))
    return math.ceil(max(waits))
