"""Settings of a server process, read once from the environment.

Every knob has a default that suits `make run` on one machine; production sets
`MONGODB_URI` (a replica set, majority writes) and a secret key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[2]


N = TypeVar("N", int, float)


def _env_number(name: str, default: N) -> N:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return type(default)(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a {type(default).__name__}, got {raw!r}") from None


def _default_dir(env: str, name: str) -> Path:
    configured = os.environ.get(env)
    if configured:
        return Path(configured)
    # Installed from a checkout (`pip install -e .`): the repo's own directories.
    return PROJECT_ROOT / name


@dataclass(frozen=True, kw_only=True)
class Settings:
    mongodb_uri: str | None = None
    database_name: str = "kubekvm"
    data_dir: Path = Path(".kubekvm")
    max_replicas: int = 200
    host_timeout_seconds: float = 30.0
    # Lab VMs idle most of the time, so vCPUs are shared the way VDI pools share them;
    # memory is never over-committed.
    cpu_overcommit: int = 16
    templates_dir: Path = field(default_factory=lambda: _default_dir("KUBEKVM_TEMPLATES_DIR", "templates"))
    static_dir: Path = field(default_factory=lambda: _default_dir("KUBEKVM_STATIC_DIR", "static"))
    seed_templates: bool = True
    # The pages' live-update streams send a comment this often, so proxies keep them open
    # and a vanished client is noticed even while nothing changes.
    live_heartbeat_seconds: float = 15.0

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            mongodb_uri=os.environ.get("MONGODB_URI") or None,
            database_name=os.environ.get("KUBEKVM_DATABASE", "kubekvm"),
            data_dir=Path(os.environ.get("KUBEKVM_DATA_DIR", ".kubekvm")),
            max_replicas=_env_number("KUBEKVM_MAX_REPLICAS", 200),
            host_timeout_seconds=_env_number("KUBEKVM_HOST_TIMEOUT", 30.0),
            cpu_overcommit=_env_number("KUBEKVM_CPU_OVERCOMMIT", 16),
            seed_templates=os.environ.get("KUBEKVM_SEED_TEMPLATES", "1") != "0",
            live_heartbeat_seconds=_env_number("KUBEKVM_LIVE_HEARTBEAT", 15.0),
        )
