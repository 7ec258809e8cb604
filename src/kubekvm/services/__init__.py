"""The service layer: every operation on the platform's records, one module per noun.

- `context`: what they share (settings, event feed, publishing, `finish`, `backoff`);
- `templates`, `labs`, `rosters`, `machines`, `hosts`: the operations on each noun;
- `convergence`: what follows every lab change (machines follow the lab, its phase is
  recomputed), made again by the janitor; `placement`: machines onto hosts.

`Services` composes them around one `Context`; the nouns reach each other through it
(`services.labs`, `services.placement`, …). The rules they apply come from the plain modules
(`validation`, `lifecycle`, `placement`, `roster`); who may call what is `kubekvm.authorized`'s.
Each operation either does all it says or raises a `KubeKVMError` having written nothing (a
half-made lab is removed again). Several server replicas run this code against one database at
once: creating something unique relies on the unique index, not on a prior lookup; every other
contended write is conditional (see `convergence` and `placement`); and a change and its
consequences are one unit (`context.finish`), so a client that drops its connection mid-await
cannot cut them in half.
"""

from __future__ import annotations

from kubekvm.config import Settings
from kubekvm.consoles import Consoles
from kubekvm.events import EventFeed
from kubekvm.services.context import Context, ServerInfo, backoff, finish, object_id
from kubekvm.services.convergence import Convergence
from kubekvm.services.hosts import Hosts, HostStatus, host_name
from kubekvm.services.labs import Labs, Page, lab_filter
from kubekvm.services.machines import Machines
from kubekvm.services.placement import Placement
from kubekvm.services.rosters import Rosters
from kubekvm.services.templates import Templates

__all__ = ["Context", "HostStatus", "Page", "ServerInfo", "Services", "backoff", "finish", "host_name",
           "lab_filter", "object_id"]


class Services:
    """The service layer of one server process: the nouns, sharing one context."""

    def __init__(self, *, settings: Settings, feed: EventFeed, database_description: str) -> None:
        self.ctx = Context(settings=settings, feed=feed, database_description=database_description)
        self.settings = settings
        self.feed = feed
        # Machines' consoles: tickets and sessions (the websockets are `kubekvm.console`'s).
        self.consoles = Consoles(settings=settings, feed=feed)
        self.templates = Templates(self)
        self.labs = Labs(self)
        self.convergence = Convergence(self)
        self.rosters = Rosters(self)
        self.machines = Machines(self)
        self.hosts = Hosts(self)
        self.placement = Placement(self)
