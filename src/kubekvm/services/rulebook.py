"""The standing rules an operation declares (`@operation(rule, …)` of `kubekvm.services.rules`).

Each is a `Rule`: a check, made of `kubekvm.access`'s plain rules, that looks up what it needs
(the lab, the machine, the template, the host) and raises the refusal, and the table of what
each kind of caller of the authorization matrix gets from it. An operation whose own checks
refuse more says so where it is declared (`outcomes=`).
"""

from __future__ import annotations

from kubekvm.access.objects import may_serve_console
from kubekvm.access.roles import require_admin, require_host_or_admin, require_staff, require_user
from kubekvm.errors import Forbidden
from kubekvm.services.rules import FORBIDDEN, NOT_FOUND, OK, Arguments, Operations, Rule, outcomes


async def _anyone(ops: Operations, args: Arguments) -> None:
    return None


async def _signed_in(ops: Operations, args: Arguments) -> None:
    require_user(ops.actor)


async def _staff(ops: Operations, args: Arguments) -> None:
    require_staff(ops.actor)


async def _admin(ops: Operations, args: Arguments) -> None:
    require_admin(ops.actor)


async def _lab_seen(ops: Operations, args: Arguments) -> None:
    await ops.seen_lab(args["name"])


async def _lab_managed(ops: Operations, args: Arguments) -> None:
    await ops.managed_lab(args["name"])


async def _machine_seen(ops: Operations, args: Arguments) -> None:
    await ops.seen_machine(args["name"])


async def _template_usable(ops: Operations, args: Arguments) -> None:
    require_staff(ops.actor)
    await ops.usable_template(args["name"])


def _host_argument(args: Arguments) -> str:
    return str(args["host"] if "host" in args else args["name"])


async def _host_agent(ops: Operations, args: Arguments) -> None:
    require_host_or_admin(ops.actor, _host_argument(args))


async def _host_or_staff(ops: Operations, args: Arguments) -> None:
    if ops.actor.is_host:
        require_host_or_admin(ops.actor, _host_argument(args))
    else:
        require_staff(ops.actor)


async def _any_host_or_admin(ops: Operations, args: Arguments) -> None:
    if not ops.actor.is_host:
        require_admin(ops.actor)


async def _host_itself(ops: Operations, args: Arguments) -> None:
    host = _host_argument(args)
    require_host_or_admin(ops.actor, host)
    if not may_serve_console(ops.actor, host):
        raise Forbidden("Only the host's own agent (its host token) may carry its consoles.")
    await ops.services.hosts.get_host(host)


EVERYONE = Rule("anyone", _anyone, outcomes(anonymous=OK, student=OK, other=OK, host=OK, owner=OK))
SIGNED_IN = Rule("any signed-in person", _signed_in, outcomes(student=OK, other=OK, owner=OK))
STAFF = Rule("teachers and admins", _staff, outcomes(other=OK, owner=OK))
ADMIN = Rule("admins", _admin, outcomes())
LAB_SEEN = Rule("whoever may see the lab `name`", _lab_seen, outcomes(student=OK, other=NOT_FOUND, owner=OK))
LAB_MANAGED = Rule("the owner of the lab `name`, and admins", _lab_managed, outcomes(other=NOT_FOUND, owner=OK))
MACHINE_SEEN = Rule("the machine's student, the lab's owner, admins", _machine_seen,
                    outcomes(student=OK, other=NOT_FOUND, owner=OK))
TEMPLATE_USABLE = Rule("staff the template `name` is for", _template_usable, outcomes(other=OK, owner=OK))
HOST_AGENT = Rule("the agent of the host, and admins", _host_agent, outcomes(host=OK))
HOST_OR_STAFF = Rule("the agent of the host, teachers and admins", _host_or_staff, outcomes(other=OK, owner=OK,
                                                                                            host=OK))
IMAGE_READER = Rule("every host's agent, and admins", _any_host_or_admin, outcomes(host=OK))
HOST_ITSELF = Rule("the agent of the host only", _host_itself, outcomes(host=OK, admin=FORBIDDEN))
