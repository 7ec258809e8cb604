"""The checks by role alone: whether an actor is a signed-in person of a role, or a host's agent.

What a role may never do is refused here without looking anything up (FORBIDDEN, or
UNAUTHENTICATED for nobody); the rules on particular objects are in `kubekvm.access.objects`.
"""

from __future__ import annotations

from kubekvm.access.actors import Actor, ActorKind
from kubekvm.domain import Role
from kubekvm.errors import Forbidden, Unauthenticated


def require_user(actor: Actor, *roles: Role) -> None:
    """A signed-in person, of one of `roles` (any role if none given)."""
    if actor.kind == ActorKind.ANONYMOUS:
        raise Unauthenticated("Sign in first: this needs an account (a session or an API token).")
    if actor.kind == ActorKind.SCRAPER:
        raise Forbidden("A scrape token can only read /metrics.")
    if actor.kind != ActorKind.USER:
        raise Forbidden("A host token can only register, report and follow its own host.")
    if roles and actor.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise Forbidden(f"Only {allowed} accounts may do this; you are signed in as a {actor.role}.")


def require_admin(actor: Actor) -> None:
    require_user(actor, Role.ADMIN)


def require_staff(actor: Actor) -> None:
    """Admins and teachers."""
    require_user(actor, Role.ADMIN, Role.TEACHER)


def require_host_or_admin(actor: Actor, host: str) -> None:
    """The agent of `host` (its host token), or an admin."""
    if actor.kind == ActorKind.ANONYMOUS:
        raise Unauthenticated("Sign in first: host agents authenticate with their host token.")
    if actor.is_admin or (actor.is_host and actor.name == host):
        return
    if actor.is_host:
        raise Forbidden(f"This token is for host {actor.name!r}; it cannot act for host {host!r}.")
    raise Forbidden("Only a host's agent (with its host token) or an admin may do this.")
