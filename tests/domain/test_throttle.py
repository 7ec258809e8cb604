"""The sign-in throttle's rules (`kubekvm.throttle`), as plain functions of counters and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubekvm.throttle import Counter, Rules, address_block, keys, wait_seconds

RULES = Rules()
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
NONE = Counter()


def _failed(n: int, *, ago: float = 0.0, good_days_ago: float | None = None) -> Counter:
    return Counter(failures=n, window_start=NOW - timedelta(seconds=max(ago, 1)),
                   last_failure=NOW - timedelta(seconds=ago),
                   good_at=None if good_days_ago is None else NOW - timedelta(days=good_days_ago))


def test_a_pair_is_locked_after_five_failures_doubling_up_to_the_window() -> None:
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(4), account=_failed(4), address=_failed(4)) == 0
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(5), account=_failed(5), address=_failed(5)) == 60
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(6), account=_failed(6), address=_failed(6)) == 120
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(30), account=_failed(30), address=_failed(30)) == 900
    # The lockout runs from the last failure.
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(5, ago=45), account=_failed(5), address=NONE) == 15
    # An old window no longer counts.
    stale = Counter(failures=9, window_start=NOW - timedelta(hours=1), last_failure=NOW)
    assert wait_seconds(rules=RULES, now=NOW, pair=stale, account=stale, address=stale) == 0


def test_an_account_under_attack_slows_failing_addresses_never_a_fresh_or_known_one() -> None:
    attacked = _failed(10)
    # An address that has failed on it waits; one that has not, or that signed in before, does not.
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(1), account=attacked, address=_failed(1)) == 1
    assert wait_seconds(rules=RULES, now=NOW, pair=NONE, account=_failed(10_000), address=NONE) == 0
    known = _failed(1, good_days_ago=3)
    assert wait_seconds(rules=RULES, now=NOW, pair=known, account=_failed(10_000), address=NONE) == 0
    # The delay doubles with every five failures, up to 30 s.
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(1), account=_failed(15), address=NONE) == 2
    assert wait_seconds(rules=RULES, now=NOW, pair=_failed(1), account=_failed(1000), address=NONE) == 30


def test_a_busy_shared_address_holds_back_only_accounts_not_known_there() -> None:
    classroom = _failed(30)
    assert wait_seconds(rules=RULES, now=NOW, pair=NONE, account=NONE, address=classroom) == 0
    sprayed = _failed(100, ago=10)
    assert wait_seconds(rules=RULES, now=NOW, pair=NONE, account=NONE, address=sprayed) == 50
    assert wait_seconds(rules=RULES, now=NOW, pair=Counter(good_at=NOW - timedelta(days=2)), account=NONE,
                        address=sprayed) == 0
    # Known-good lapses after 30 days.
    assert wait_seconds(rules=RULES, now=NOW, pair=Counter(good_at=NOW - timedelta(days=31)), account=NONE,
                        address=sprayed) == 50


def test_keys_group_ipv6_by_64_and_names_by_case() -> None:
    assert address_block("2001:db8:1:2:3:4:5:6") == address_block("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_block("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_block("192.0.2.1") == "192.0.2.1"
    assert keys("Ana", "192.0.2.1") == keys("ana ", "192.0.2.1")
    assert keys("ana", "192.0.2.1").pair == "pair:ana|192.0.2.1"
