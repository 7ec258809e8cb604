"""How many long-lived things one user may hold open on this server process.

A live-update stream (GET /events) or a GraphQL subscription holds a feed subscription, a queue
and a task for as long as it is open: one student opening hundreds of them would cost every
other user. `Quota` counts what each user (an account, or the agent of a host) holds, and
refuses past the limit; the slot is given back when the stream or subscription ends, however
it ends (the client left, the server cancelled it).

The counts are this replica's own, in memory: with N replicas one user may hold up to N times a
limit in all. That bounds what one person costs each replica, which is what the limits are for;
counting across replicas would cost a database write per stream opened and closed.

The limits (`kubekvm.config.Settings`): `live_max_streams_per_user` (KUBEKVM_LIVE_MAX_STREAMS_PER_USER),
`graphql_max_subscriptions_per_connection` and `graphql_max_subscriptions_per_user`. Refusals:
429 with a sentence for a live stream; a GraphQL error with `extensions.code`
TOO_MANY_SUBSCRIPTIONS for a subscription.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from prometheus_client import Gauge

from kubekvm import metrics
from kubekvm.access.actors import Actor
from kubekvm.errors import TooManySubscriptions


def holder(actor: Actor) -> str:
    """Whose count a request goes to: one key per account or host agent."""
    return f"{actor.kind.value}:{actor.name}"


class Quota:
    def __init__(self, *, limit: int, what: str, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.what = what  # "live-update streams", for the refusal's sentence
        self.held: Counter[str] = Counter()
        self.gauge = gauge  # this replica's count of them all (kubekvm.metrics), if it has one

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One slot of `key`'s for the duration of the block; TooManySubscriptions if none is left."""
        if self.held[key] >= self.limit:
            raise TooManySubscriptions(f"You already have {self.limit} {self.what} open, as many as one "
                                       "person may; close some (other tabs or clients) and try again.")
        self.held[key] += 1
        if self.gauge is not None:
            self.gauge.inc()
        try:
            yield
        finally:
            if self.gauge is not None:
                self.gauge.dec()
            self.held[key] -= 1
            if self.held[key] <= 0:
                del self.held[key]


class SubscriptionQuotas:
    """The GraphQL subscriptions' two limits: per websocket and per user."""

    def __init__(self, *, per_connection: int, per_user: int) -> None:
        self.per_connection = per_connection
        self.per_user = Quota(limit=per_user, what="GraphQL subscriptions",
                              gauge=metrics.STREAMS_OPEN.labels(kind="graphql"))

    @contextlib.contextmanager
    def hold(self, *, actor: Actor, connection: Quota) -> Iterator[None]:
        with connection.hold(""), self.per_user.hold(holder(actor)):
            yield

    def for_connection(self) -> Quota:
        """The count of one websocket (kept in its GraphQL context)."""
        return Quota(limit=self.per_connection, what="subscriptions on this connection")
