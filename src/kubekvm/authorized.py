"""The operations as one actor may call them: every noun's declared operations, gathered.

GraphQL resolvers and page handlers get an `Authorized` for the request's actor (built by the
auth middleware, `kubekvm.auth`) and call its operations. Each is declared in its noun's module
of the service layer (`kubekvm.services.labs.LabOperations`, …) with the rule saying who may
call it and how it is audited (`kubekvm.services.rules`), so pages and the API share one
enforcement point; nothing here is written by hand but the list of nouns.
"""

from __future__ import annotations

from kubekvm.config import Settings
from kubekvm.events import EventFeed
from kubekvm.services.audit import AuditOperations
from kubekvm.services.changes import SESSION_RECHECK_SECONDS, ChangeOperations
from kubekvm.services.console_requests import ConsoleRequestOperations
from kubekvm.services.consoles import ConsoleOperations
from kubekvm.services.hosts import HostOperations
from kubekvm.services.identities import IdentityOperations
from kubekvm.services.images import ImageOperations
from kubekvm.services.labs import LabOperations
from kubekvm.services.machines import MachineOperations
from kubekvm.services.overview import OverviewOperations
from kubekvm.services.publishing import PublishOperations
from kubekvm.services.rosters import RosterOperations
from kubekvm.services.server import ServerOperations
from kubekvm.services.template_versions import TemplateVersionOperations
from kubekvm.services.templates import TemplateOperations
from kubekvm.services.timetables import TimetableOperations
from kubekvm.services.tokens import TokenOperations
from kubekvm.services.usage import UsageOperations
from kubekvm.services.user_admin import UserAdminOperations
from kubekvm.services.users import UserOperations

__all__ = ["SESSION_RECHECK_SECONDS", "Authorized"]


class Authorized(TemplateOperations, LabOperations, RosterOperations, MachineOperations, HostOperations,
                 ConsoleOperations, ConsoleRequestOperations, ChangeOperations, UserOperations, TokenOperations,
                 AuditOperations, ServerOperations, ImageOperations, TimetableOperations,
                 IdentityOperations, UsageOperations, OverviewOperations, TemplateVersionOperations,
                 PublishOperations, UserAdminOperations):
    """The service layer as one actor may use it."""

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def feed(self) -> EventFeed:
        return self.services.feed
