"""The rules on one object: who may see or manage a lab, see a machine, open or serve its console,
and use a template.

They answer yes or no; the layer that enforces them (`kubekvm.authorized`) turns a no into
NOT_FOUND for an object the actor may not even see, so that teacher B learns nothing of teacher
A's labs.
"""

from __future__ import annotations

from kubekvm.access.actors import Actor
from kubekvm.access.facts import LabFacts, MachineFacts, TemplateFacts


def can_view_lab(actor: Actor, lab: LabFacts) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return lab.owner == actor.name
    if actor.is_student:
        return actor.name in lab.roster
    return False


def can_manage_lab(actor: Actor, lab: LabFacts) -> bool:
    return actor.is_admin or (actor.is_teacher and lab.owner == actor.name)


def can_view_machine(actor: Actor, machine: MachineFacts, lab: LabFacts) -> bool:
    if actor.is_student:
        return machine.student == actor.name
    return can_manage_lab(actor, lab)


def can_open_console(actor: Actor, machine: MachineFacts, lab: LabFacts) -> bool:
    """Whoever sits at the machine: its student, the lab's owner, an admin; never a host."""
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return lab.owner == actor.name
    if actor.is_student:
        return machine.student == actor.name
    return False


def may_serve_console(actor: Actor, host: str) -> bool:
    """Only the agent of the machine's host carries its console (not even an admin's token)."""
    return actor.is_host and actor.name == host


def can_use_template(actor: Actor, template: TemplateFacts) -> bool:
    if actor.is_admin:
        return True
    if actor.is_teacher:
        return not template.teachers or actor.name in template.teachers
    return False
