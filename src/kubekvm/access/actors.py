"""Who is asking: the `Actor` every rule of `kubekvm.access` is a function of, and its kinds.

An actor is nobody (anonymous), a person (a user with a role, signed in with a session cookie
or an API token), a host agent (a host token, acting for that one host), a scraper (a scrape
token, for `/metrics`) or the platform itself acting on its own rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubekvm.domain import Role


class ActorKind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    HOST = "host"
    # A scrape token (Prometheus): reads /metrics and nothing else.
    SCRAPER = "scraper"
    # The platform itself, acting on its own rules rather than a request (the timetable's starts
    # and stops, a course's expiry, an idle machine stopped): it appears in the audit log as such,
    # is never the actor of a request, and every rule refuses it.
    SYSTEM = "system"


@dataclass(frozen=True, kw_only=True)
class Actor:
    kind: ActorKind
    name: str = ""
    role: Role | None = None
    address: str = ""
    # "session" (a browser's cookie: state-changing requests need the CSRF token) or "token".
    via: str = ""
    # The id of the session document a cookie-signed-in actor acts through ("" otherwise): a
    # password change keeps this one, and long-lived connections check it is still live.
    session: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.ADMIN

    @property
    def is_teacher(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.TEACHER

    @property
    def is_student(self) -> bool:
        return self.kind == ActorKind.USER and self.role == Role.STUDENT

    @property
    def is_user(self) -> bool:
        return self.kind == ActorKind.USER

    @property
    def is_host(self) -> bool:
        return self.kind == ActorKind.HOST

    @property
    def label(self) -> str:
        return self.name if self.kind != ActorKind.ANONYMOUS else "anonymous"


def anonymous(address: str = "") -> Actor:
    return Actor(kind=ActorKind.ANONYMOUS, address=address)


def system(job: str) -> Actor:
    """The platform acting on its own rules, as the audit log names it (`kubekvm:<job>`)."""
    return Actor(kind=ActorKind.SYSTEM, name=f"kubekvm:{job}")
