"""What the server says of itself (which replica answered, its database and event stream)."""

from __future__ import annotations

from kubekvm.services.context import ServerInfo
from kubekvm.services.rules import EVERYONE, Operations, operation


class ServerOperations(Operations):
    @operation(EVERYONE, field="serverInfo")
    async def server_info(self) -> ServerInfo:
        return self.services.ctx.server_info()
