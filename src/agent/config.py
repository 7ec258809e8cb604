"""Config: the agent's settings, from command-line options over ``KUBEKVM_*`` variables.

Every option has an environment variable so the same unit file or container spec serves
every host, and command-line options win so an operator can override one setting by hand.
Values are checked here, once, so the rest of the agent can trust them.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

from agent import __version__
from agent.accelerator import DomainTypeRequest
from agent.client import websocket_url
from agent.hypervisor import CONNECTIONS, MAX_CALLS_PER_CONNECTION

# Passes at once: one libvirt call each at most, so as many as the connections' call slots.
PARALLEL = CONNECTIONS * MAX_CALLS_PER_CONNECTION
# More connections than this would only queue in libvirtd: it runs at most max_workers calls
# at once (20 by default) for all its clients together.
MAX_LIBVIRT_CONNECTIONS = 32
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class AgentConfig:
    servers: tuple[str, ...]
    host_name: str
    libvirt_uri: str = "qemu:///system"
    image_dir: Path = Path("/var/lib/kubekvm/images")
    state_dir: Path = Path("/var/lib/kubekvm/state")
    domain_type: DomainTypeRequest = "auto"
    parallel: int = PARALLEL
    stop_grace: float = 60.0
    resync_interval: float = 30.0
    # How often running guests' CPU times are sampled and sent (idle shutdown); 0: never.
    cpu_sample_interval: float = 60.0
    heartbeat_interval: float = 10.0
    libvirt_timeout: float = 60.0
    libvirt_connections: int = CONNECTIONS
    gc_orphans: bool = False
    token: str | None = None
    # Kubernetes mounts per-node tokens as files; re-read at each reconnect, so a rotated
    # token is picked up without restarting the agent.
    token_file: Path | None = None
    health_port: int = 0
    health_address: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "text"

    def current_token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError:
                return None
        return self.token

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> AgentConfig:
        """Parses ``argv`` with defaults from ``environ``; exits with usage on bad input."""
        environ = environ if environ is not None else {}
        parser = _parser(environ)
        args = parser.parse_args(argv)
        servers = tuple(url.strip() for url in (args.server or "").split(",") if url.strip())
        if not servers:
            parser.error("--server (or KUBEKVM_SERVER) is required")
        for server in servers:
            try:
                websocket_url(server)
            except ValueError as error:
                parser.error(str(error))
        if not args.host_name:
            parser.error("--host-name must not be empty")
        if not 0 <= args.health_port <= 65535:
            parser.error("--health-port must be 0 (off) to 65535")
        if args.parallel < 1:
            parser.error("--parallel must be at least 1")
        if args.cpu_sample_interval < 0:
            parser.error("--cpu-sample-interval must be 0 (off) or positive")
        if not 1 <= args.libvirt_connections <= MAX_LIBVIRT_CONNECTIONS:
            parser.error(f"--libvirt-connections must be 1 to {MAX_LIBVIRT_CONNECTIONS}")
        for option in ("stop_grace", "resync_interval", "heartbeat_interval", "libvirt_timeout"):
            if getattr(args, option) <= 0:
                parser.error(f"--{option.replace('_', '-')} must be positive")
        try:
            gc_orphans = args.gc_orphans or _flag(environ.get("KUBEKVM_GC_ORPHANS", ""))
        except ValueError as error:
            parser.error(str(error))
        return cls(
            servers=servers,
            host_name=args.host_name,
            libvirt_uri=args.libvirt_uri,
            image_dir=Path(args.image_dir).absolute(),
            state_dir=Path(args.state_dir).absolute(),
            domain_type=cast(DomainTypeRequest, args.domain_type),
            parallel=args.parallel,
            stop_grace=args.stop_grace,
            resync_interval=args.resync_interval,
            cpu_sample_interval=args.cpu_sample_interval,
            heartbeat_interval=args.heartbeat_interval,
            libvirt_timeout=args.libvirt_timeout,
            libvirt_connections=args.libvirt_connections,
            gc_orphans=gc_orphans,
            token=args.token or None,
            token_file=Path(args.token_file) if args.token_file else None,
            health_port=args.health_port,
            health_address=args.health_address,
            log_level=args.log_level.upper(),
            log_format=args.log_format.lower(),
        )


def _flag(value: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ValueError(f"KUBEKVM_GC_ORPHANS={value!r}: use true or false")


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str, default: str | None = None) -> str | None:
        return environ.get(f"KUBEKVM_{name}", default)

    # String defaults on purpose: argparse runs them through ``type`` too, so a bad
    # environment value gets the same clear usage error as a bad option.
    parser = argparse.ArgumentParser(
        prog="kubekvm-agent",
        description="KubeKVM host agent: runs the lab machines the server assigns to this "
        "host through libvirt and reports what they do.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--server", default=env("SERVER"), metavar="URL[,URL...]",
                        help="server URL(s), tried in turn [KUBEKVM_SERVER]")
    parser.add_argument("--host-name", default=env("HOST_NAME", socket.gethostname()),
                        help="this host's name on the server [KUBEKVM_HOST_NAME; hostname]")
    parser.add_argument("--libvirt-uri", default=env("LIBVIRT_URI", "qemu:///system"),
                        metavar="URI", help="[KUBEKVM_LIBVIRT_URI; qemu:///system]")
    parser.add_argument("--image-dir", default=env("IMAGE_DIR", "/var/lib/kubekvm/images"),
                        metavar="DIR",
                        help="base images (*.qcow2) [KUBEKVM_IMAGE_DIR; %(default)s]")
    parser.add_argument("--state-dir", default=env("STATE_DIR", "/var/lib/kubekvm/state"),
                        metavar="DIR",
                        help="overlays and serial logs [KUBEKVM_STATE_DIR; %(default)s]")
    parser.add_argument("--domain-type", default=env("DOMAIN_TYPE", "auto"),
                        choices=get_args(DomainTypeRequest),
                        help="kvm, qemu (TCG) or auto: kvm if it can run a probe guest "
                        "[KUBEKVM_DOMAIN_TYPE; auto]")
    parser.add_argument("--parallel", type=int, default=env("PARALLEL", str(PARALLEL)),
                        metavar="N", help=f"machines worked on at once [KUBEKVM_PARALLEL; {PARALLEL}]")
    parser.add_argument("--stop-grace", type=float,
                        default=env("STOP_GRACE", "60"), metavar="S",
                        help="seconds between ACPI shutdown and force-off "
                        "[KUBEKVM_STOP_GRACE; 60]")
    parser.add_argument("--resync-interval", type=float,
                        default=env("RESYNC_INTERVAL", "30"), metavar="S",
                        help="seconds between full re-reads of libvirt "
                        "[KUBEKVM_RESYNC_INTERVAL; 30]")
    parser.add_argument("--cpu-sample-interval", type=float,
                        default=env("CPU_SAMPLE_INTERVAL", "60"), metavar="S",
                        help="seconds between samples of running guests' CPU time, sent to the "
                        "server for idle shutdown; 0 = off [KUBEKVM_CPU_SAMPLE_INTERVAL; 60]")
    parser.add_argument("--heartbeat-interval", type=float,
                        default=env("HEARTBEAT_INTERVAL", "10"), metavar="S",
                        help="[KUBEKVM_HEARTBEAT_INTERVAL; 10]")
    parser.add_argument("--libvirt-timeout", type=float,
                        default=env("LIBVIRT_TIMEOUT", "60"), metavar="S",
                        help="seconds a libvirt call may take before its connection is "
                        "replaced and the step retried [KUBEKVM_LIBVIRT_TIMEOUT; 60]")
    parser.add_argument("--libvirt-connections", type=int,
                        default=env("LIBVIRT_CONNECTIONS", str(CONNECTIONS)), metavar="N",
                        help=f"libvirt connections at most, each with {MAX_CALLS_PER_CONNECTION} calls in "
                        f"flight (libvirtd's max_client_requests is 5) [KUBEKVM_LIBVIRT_CONNECTIONS; {CONNECTIONS}]")
    parser.add_argument("--gc-orphans", action="store_true",
                        help="remove KubeKVM domains the server no longer assigns here "
                        "[KUBEKVM_GC_ORPHANS]")
    parser.add_argument("--token", default=env("HOST_TOKEN"),
                        help="bearer token for the server [KUBEKVM_HOST_TOKEN]")
    parser.add_argument("--token-file", default=env("HOST_TOKEN_FILE"), metavar="PATH",
                        help="read the token from this file at each connection [KUBEKVM_HOST_TOKEN_FILE]")
    parser.add_argument("--health-port", type=int, default=env("HEALTH_PORT", "0"), metavar="PORT",
                        help="serve /healthz on this port; 0 = off [KUBEKVM_HEALTH_PORT; 0]")
    parser.add_argument("--health-address", default=env("HEALTH_ADDRESS", "127.0.0.1"), metavar="ADDR",
                        help="address of the health endpoint [KUBEKVM_HEALTH_ADDRESS; 127.0.0.1]")
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info",
                                 "warning", "error"],
                        help="[KUBEKVM_LOG_LEVEL; INFO]")
    parser.add_argument("--log-format", default=env("LOG_FORMAT", "text"), choices=["text", "json"],
                        type=str.lower, help="json: one JSON object per line [KUBEKVM_LOG_FORMAT; text]")
    return parser
