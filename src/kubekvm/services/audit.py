"""The audit log: who did what to which object, when, from where, and how it ended.

`record` is how an entry is written — by the one wrapper of the declared operations
(`rules.operation`), and by the few operations that record themselves (signing in, opening a
console). The log is only ever inserted into: nothing here updates or deletes an entry. Admins
read it (`AuditOperations.audit_log`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubekvm import metrics, validation
from kubekvm.access.actors import Actor
from kubekvm.models import AuditEntry
from kubekvm.services.rulebook import ADMIN
from kubekvm.services.rules import Operations, operation

# An outcome that is an error code (a closed set) may be a metric's label; anything else is "other".
_CODE = re.compile(r"[A-Z][A-Z_]{1,39}")


@dataclass(frozen=True, kw_only=True)
class AuditPage:
    items: list[AuditEntry]
    total: int


async def record(actor: Actor, *, action: str, target: str = "", outcome: str = "ok", message: str = "") -> None:
    # What was attempted is recorded as sent (a refused lab name, a typed sign-in name), so
    # it is made harmless to show: no control or text-direction characters, bounded.
    await AuditEntry(actor=validation.note(actor.name, max_length=200, multiline=False),
                     actor_kind=actor.kind.value, role=actor.role.value if actor.role else "", action=action,
                     target=validation.note(target, max_length=300, multiline=False), address=actor.address,
                     outcome=outcome, message=validation.note(message)).insert()
    metrics.AUDIT_WRITES.labels(outcome=outcome if outcome == "ok" or _CODE.fullmatch(outcome) else "other").inc()


async def audit_log(*, actor: str | None = None, action: str | None = None, target: str | None = None,
                    outcome: str | None = None, since: datetime | None = None, offset: int = 0,
                    limit: int = 100) -> AuditPage:
    query: dict[str, Any] = {}
    for key, value in (("actor", actor), ("action", action), ("target", target)):
        if value:
            query[key] = value
    if outcome == "refused":
        query["outcome"] = {"$ne": "ok"}
    elif outcome:
        query["outcome"] = outcome
    if since is not None:
        query["at"] = {"$gte": since}
    found = AuditEntry.find(query)
    total = await found.count()
    items = await found.sort("-at").skip(max(offset, 0)).limit(max(min(limit, 500), 1)).to_list()
    return AuditPage(items=items, total=total)


class AuditOperations(Operations):
    @operation(ADMIN, field="auditLog")
    async def audit_log(self, *, actor: str | None = None, action: str | None = None, target: str | None = None,
                        outcome: str | None = None, since: datetime | None = None, offset: int = 0,
                        limit: int = 100) -> AuditPage:
        offset = validation.offset(offset)
        limit = validation.limit(limit, maximum=validation.AUDIT_PAGE_MAX)
        return await audit_log(actor=actor, action=action, target=target, outcome=outcome, since=since,
                               offset=offset, limit=limit)
