"""The service layer: every operation on the platform's records, one module per noun.

Each noun's module holds its records' class (`Templates`, `Labs`, …: the writes, unchecked,
used by each other, the janitor and the CLI) and its operations class (`TemplateOperations`,
…: what a caller may do, each operation declaring its rule, `rules.operation`).

- `context`: what the nouns share (settings, event feed, publishing, `finish`, `backoff`);
- `rules`: the rules of the operations and the one wrapper that checks them and audits;
- `templates`, `labs`, `rosters`, `machines`, `hosts`, `consoles`: the platform's nouns
  (`console_requests`: how a host's agent hears that a console waits for it; `images`: the
  image store's golden images; `template_versions`: templates' numbered images; `reports`: what
  the hosts' agents observe of their machines, applied a batch at a time; `publishing`: a machine
  made a template's version);
- `timetables`: a lab's timetable and course (end date, usage, unused labs);
- `usage`: a lab's limits on running (idle shutdown, hours per student), each student's hours
  and grants of more; `running_time`: the running time hosts observe; `auto_stops`: the
  machines stopped on those limits;
- `convergence`: what follows every lab change (machines follow the lab, its phase is
  recomputed), made again by the janitor; `placement`: machines onto hosts;
- `users`, `links` (set-password links), `tokens`, `sessions` (and sign-in), `server` (its first
  start): the records of people, gathered in `accounts`; with `audit` and `changes` (live changes
  as a caller may see them), the rest of the operations.

`Services` composes the records' classes around one `Context`; they reach each other through
it (`services.labs`, `services.placement`, …). `kubekvm.authorized.Authorized` gathers the
operations classes for one actor. The rules the services apply come from the plain modules
(`validation`, `lifecycle`, `placement`, `roster`, `access`). Each operation either does all
it says or raises a `KubeKVMError` having written nothing (a half-made lab is removed again).
Several server replicas run this code against one database at once: creating something unique
relies on the unique index, not on a prior lookup; every other contended write is conditional
(see `convergence` and `placement`); and a change and its consequences are one unit
(`context.finish`), so a client that drops its connection mid-await cannot cut them in half.
"""

from __future__ import annotations

from kubekvm.config import Settings
from kubekvm.events import EventFeed
from kubekvm.services.auto_stops import AutoStops
from kubekvm.services.console_requests import ConsoleRequests
from kubekvm.services.consoles import Consoles
from kubekvm.services.context import Context, ServerInfo, backoff, finish, object_id
from kubekvm.services.convergence import Convergence
from kubekvm.services.hosts import Hosts, HostStatus, host_name
from kubekvm.services.images import Images
from kubekvm.services.labs import Labs, Page, lab_filter
from kubekvm.services.machines import Machines
from kubekvm.services.placement import Placement
from kubekvm.services.publishing import Publishing
from kubekvm.services.reports import Reports
from kubekvm.services.rosters import Rosters
from kubekvm.services.running_time import RunningTime
from kubekvm.services.template_versions import TemplateVersions
from kubekvm.services.templates import Templates
from kubekvm.services.timetables import Timetables
from kubekvm.services.usage import Usage
from kubekvm.shared_reads import SharedReads

__all__ = ["Context", "HostStatus", "Page", "ServerInfo", "Services", "backoff", "finish", "host_name",
           "lab_filter", "object_id"]


class Services:
    """The service layer of one server process: the nouns, sharing one context."""

    def __init__(self, *, settings: Settings, feed: EventFeed, database_description: str) -> None:
        self.ctx = Context(settings=settings, feed=feed, database_description=database_description)
        self.settings = settings
        self.feed = feed
        # Identical reads asked together (subscribers' starts and re-checks) made once.
        self.shared_reads = SharedReads()
        # Machines' consoles: tickets and sessions (the websockets are `kubekvm.console`'s).
        self.consoles = Consoles(settings=settings, feed=feed)
        # And how a host's agent hears that a console waits for it.
        self.console_requests = ConsoleRequests(settings=settings, feed=feed)
        self.templates = Templates(self)
        self.labs = Labs(self)
        self.convergence = Convergence(self)
        self.rosters = Rosters(self)
        self.machines = Machines(self)
        self.reports = Reports(self)
        self.hosts = Hosts(self)
        self.placement = Placement(self)
        self.images = Images(self)
        # Labs' timetables and courses (fired by `kubekvm.scheduler`).
        self.timetables = Timetables(self)
        # Limits on running (idle shutdown, hours per student), the running time hosts observe,
        # and the machines stopped on those limits.
        self.usage = Usage(self)
        self.running_time = RunningTime(self)
        self.auto_stops = AutoStops(self)
        self.template_versions = TemplateVersions(self)
        self.publishing = Publishing(self)
