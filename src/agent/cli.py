"""CLI: the ``kubekvm-agent`` command.

Parses the configuration, sets up logging (`agent.logs`) and runs the host until SIGTERM or SIGINT, which
stop the agent cleanly without touching any machine (systemd stops the agent on upgrades;
the labs must not notice).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from agent import logs
from agent.config import AgentConfig
from agent.host import run_host


def main(argv: Sequence[str] | None = None) -> int:
    config = AgentConfig.from_sources(argv, os.environ)
    logs.configure(format=config.log_format, level=config.log_level)
    try:
        asyncio.run(_serve(config))
    except KeyboardInterrupt:
        pass
    except Exception as error:
        logging.getLogger("agent").error("%s", error)
        return 1
    return 0


async def _serve(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_host(config, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
