"""Settings of a server process, read once from the environment.

Every knob has a default that suits `make run` on one machine; production sets
`MONGODB_URI` (a replica set, majority writes) and a secret key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kubekvm.identity_config import IdentitySettings

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


def _at_least(name: str, default: int, *, minimum: int) -> int:
    value = _env_number(name, default)
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}, got {value}")
    return value


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
    # A machine creating (or waiting for a host) longer than this, or starting, stopping or being
    # removed longer than that, is shown as unusually long (`kubekvm.progress`).
    slow_create_seconds: float = 600.0
    slow_change_seconds: float = 180.0
    templates_dir: Path = field(default_factory=lambda: _default_dir("KUBEKVM_TEMPLATES_DIR", "templates"))
    static_dir: Path = field(default_factory=lambda: _default_dir("KUBEKVM_STATIC_DIR", "static"))
    seed_templates: bool = True
    # The pages' live-update streams send a comment this often, so proxies keep them open
    # and a vanished client is noticed even while nothing changes.
    live_heartbeat_seconds: float = 15.0
    # Signs the session cookies. Unset: a random key kept in the database, shared by every
    # replica (set it to rotate the key, or to keep sessions across a database restore).
    secret_key: str | None = None
    # Test and automation hook: when no admin exists yet, an admin account "admin" is made
    # with the API token written in this file (never with a password, never logged).
    bootstrap_admin_token_file: Path | None = None
    graphql_introspection: bool = True
    graphql_max_aliases: int = 30
    # Sign-in throttling (the rules: `kubekvm.throttle`): failures of one account from one
    # address before that pair is locked out; failures of one account from all addresses before
    # addresses that keep failing on it are slowed down (never locked out); failures from one
    # address before it waits, except for accounts that signed in from it before (a class
    # behind one NAT address); the counting window; the first lockout, doubling up to the window;
    # the first slow-down of an account under attack, doubling with every 5 more failures.
    login_max_failures: int = 5
    login_slow_after: int = 10
    login_slow_seconds: float = 1.0
    login_max_failures_per_address: int = 100
    login_window_seconds: float = 900.0
    login_lockout_seconds: float = 60.0
    # Sessions: one unused this long ends (idle expiry); none lasts longer than the maximum.
    session_idle_seconds: float = 3600.0
    session_max_seconds: float = 12 * 3600.0
    # Threads that hash and check passwords (argon2id: ~0.5 s of one core and 64 MiB each), so
    # sign-ins never run on the event loop and at most this many run at once.
    password_hash_workers: int = 2
    # argon2id's cost per hash: memory in KiB and passes over it (the library's recommended
    # 64 MiB and 3). Lower only where the stored hashes guard nothing (a test server): a cheaper
    # hash is a cheaper offline guess for whoever steals the database.
    password_hash_memory_kib: int = 65536
    password_hash_iterations: int = 3
    # Where people reach this server, for the first-start setup link in the log.
    public_url: str = ""
    # This replica's own address, which host agents dial back for the consoles it serves (in
    # Kubernetes the pod's IP: through the Service an agent would reach any replica, rarely the
    # one holding the browser). Unset: the address `kubekvm serve` listens on.
    advertise_url: str = ""
    # Consoles: a ticket is good this long; a user has at most this many open at once; one
    # without keyboard or mouse input this long is closed; a host's agent must dial in this fast.
    console_ticket_seconds: float = 60.0
    console_max_per_user: int = 3
    console_idle_seconds: float = 1800.0
    console_connect_seconds: float = 20.0
    # Transport limits (kubekvm.graphql.transport, kubekvm.quotas): a /graphql request body and
    # a websocket message are refused above this size, before they are parsed.
    max_body_bytes: int = 1024 * 1024
    websocket_max_message_bytes: int = 1024 * 1024
    # Per user (an account, an API token's owner or a host's agent), counted by each replica on
    # its own: live-update streams of the pages, GraphQL subscriptions on one websocket and in
    # all. A replica's counts are not shared, so behind N replicas one user may reach N times as
    # many; a load balancer spreads one user's connections, it does not multiply the cap by N.
    live_max_streams_per_user: int = 20
    graphql_max_subscriptions_per_connection: int = 20
    graphql_max_subscriptions_per_user: int = 50
    # Websocket handshakes and live streams from pages of another origin are refused; these are
    # trusted besides this server's own (the Host it was reached at, and KUBEKVM_PUBLIC_URL's).
    allowed_origins: tuple[str, ...] = ()
    # Strict-Transport-Security's max-age, sent on answers over HTTPS; 0 sends none.
    hsts_seconds: int = 31_536_000
    # The janitor (kubekvm.janitor) recounts host allocations and lab phases from the machines
    # this often, on the one replica holding its lease; the lease lasts three intervals, so a
    # replica that dies hands the job over within that. 0 turns the janitor off.
    janitor_interval_seconds: float = 60.0
    # The usage check (kubekvm.usage_check) stops idle machines and those over their lab's
    # limits this often, on the one replica holding its lease; 0 turns it off.
    usage_check_interval_seconds: float = 60.0
    # The database: every call ends within `db_timeout_seconds` (pymongo's timeoutMS; 0: no
    # limit), finding a server to send it to within `db_server_selection_seconds` (so while the
    # database is down or electing a primary a request is answered UNAVAILABLE in about that
    # long, not after pymongo's default 30 s), and a majority write waits for its replicas at
    # most `db_write_timeout_seconds` (wtimeoutMS; with timeoutMS set, pymongo bounds that wait
    # by the operation's own deadline instead).
    # Running a course (kubekvm.scheduler): the time zone of a new timetable and its lead time
    # (machines start this long before a slot); how often the replica holding the scheduler's
    # lease looks for due events (0: never), and how late an event may still fire (later, it is
    # recorded as missed: machines starting at 14:00 for a class that ended is worse than not).
    time_zone: str = "UTC"
    schedule_lead_minutes: int = 5
    scheduler_interval_seconds: float = 20.0
    schedule_grace_seconds: float = 600.0
    # A lab past its end date is deleted (VMs and disks) this many days later, its teacher
    # warned on its page from `lab_expiry_warning_days` before; a lab nothing ran in or changed
    # for `lab_unused_days` is flagged on the admins' pages.
    lab_retention_days: int = 30
    lab_expiry_warning_days: int = 7
    lab_unused_days: int = 60
    db_timeout_seconds: float = 10.0
    db_server_selection_seconds: float = 2.0
    db_write_timeout_seconds: float = 5.0
    # The image store (kubekvm.image_store): its directory (shared by every replica: in
    # Kubernetes a ReadWriteMany volume), the largest virtual size an image may have, the
    # largest upload taken, and how long one qemu-img run (a conversion of a big raw disk) may take.
    image_store: Path = Path(".kubekvm/images")
    image_max_virtual_gib: int = 256
    image_max_upload_gib: int = 64
    image_tool_timeout_seconds: float = 1800.0
    # /metrics: the fleet's shared gauges come from the one replica holding the `metrics` lease,
    # renewed at each scrape; it lasts this long, so set it above Prometheus' scrape interval.
    metrics_lease_seconds: float = 60.0
    # Log lines: "text" (for people: `make run`) or "json" (one object per line, for a log stack).
    log_format: str = "text"
    # Sign-in from outside: OpenID Connect providers, an LDAP directory, local passwords on or
    # off (`kubekvm.identity_config`).
    identity: IdentitySettings = field(default_factory=IdentitySettings)

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            mongodb_uri=os.environ.get("MONGODB_URI") or None,
            database_name=os.environ.get("KUBEKVM_DATABASE", "kubekvm"),
            data_dir=Path(os.environ.get("KUBEKVM_DATA_DIR", ".kubekvm")),
            max_replicas=_env_number("KUBEKVM_MAX_REPLICAS", 200),
            host_timeout_seconds=_env_number("KUBEKVM_HOST_TIMEOUT", 30.0),
            cpu_overcommit=_env_number("KUBEKVM_CPU_OVERCOMMIT", 16),
            slow_create_seconds=_env_number("KUBEKVM_SLOW_CREATE_SECONDS", 600.0),
            slow_change_seconds=_env_number("KUBEKVM_SLOW_CHANGE_SECONDS", 180.0),
            seed_templates=os.environ.get("KUBEKVM_SEED_TEMPLATES", "1") != "0",
            live_heartbeat_seconds=_env_number("KUBEKVM_LIVE_HEARTBEAT", 15.0),
            secret_key=os.environ.get("KUBEKVM_SECRET_KEY") or None,
            bootstrap_admin_token_file=_env_path("KUBEKVM_BOOTSTRAP_ADMIN_TOKEN_FILE"),
            graphql_introspection=os.environ.get("KUBEKVM_GRAPHQL_INTROSPECTION", "1") != "0",
            graphql_max_aliases=_env_number("KUBEKVM_GRAPHQL_MAX_ALIASES", 30),
            login_max_failures=_env_number("KUBEKVM_LOGIN_MAX_FAILURES", 5),
            login_slow_after=_env_number("KUBEKVM_LOGIN_SLOW_AFTER", 10),
            login_slow_seconds=_env_number("KUBEKVM_LOGIN_SLOW_SECONDS", 1.0),
            login_max_failures_per_address=_env_number("KUBEKVM_LOGIN_MAX_FAILURES_PER_ADDRESS", 100),
            login_window_seconds=_env_number("KUBEKVM_LOGIN_WINDOW", 900.0),
            login_lockout_seconds=_env_number("KUBEKVM_LOGIN_LOCKOUT", 60.0),
            session_idle_seconds=_env_number("KUBEKVM_SESSION_IDLE_TIMEOUT", 3600.0),
            session_max_seconds=_env_number("KUBEKVM_SESSION_MAX_AGE", 12 * 3600.0),
            password_hash_workers=_env_number("KUBEKVM_PASSWORD_HASH_WORKERS", 2),
            password_hash_memory_kib=_at_least("KUBEKVM_PASSWORD_HASH_MEMORY_KIB", 65536, minimum=1024),
            password_hash_iterations=_at_least("KUBEKVM_PASSWORD_HASH_ITERATIONS", 3, minimum=1),
            public_url=os.environ.get("KUBEKVM_PUBLIC_URL", ""),
            advertise_url=os.environ.get("KUBEKVM_ADVERTISE_URL", ""),
            console_ticket_seconds=_env_number("KUBEKVM_CONSOLE_TICKET_SECONDS", 60.0),
            console_max_per_user=_env_number("KUBEKVM_CONSOLE_MAX_PER_USER", 3),
            console_idle_seconds=_env_number("KUBEKVM_CONSOLE_IDLE_TIMEOUT", 1800.0),
            console_connect_seconds=_env_number("KUBEKVM_CONSOLE_CONNECT_TIMEOUT", 20.0),
            max_body_bytes=_env_number("KUBEKVM_MAX_BODY_BYTES", 1024 * 1024),
            websocket_max_message_bytes=_env_number("KUBEKVM_WEBSOCKET_MAX_MESSAGE_BYTES", 1024 * 1024),
            live_max_streams_per_user=_env_number("KUBEKVM_LIVE_MAX_STREAMS_PER_USER", 20),
            graphql_max_subscriptions_per_connection=_env_number(
                "KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_CONNECTION", 20),
            graphql_max_subscriptions_per_user=_env_number("KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER", 50),
            allowed_origins=tuple(o.strip() for o in os.environ.get("KUBEKVM_ALLOWED_ORIGINS", "").split(",")
                                  if o.strip()),
            hsts_seconds=_env_number("KUBEKVM_HSTS_SECONDS", 31_536_000),
            janitor_interval_seconds=_env_number("KUBEKVM_JANITOR_INTERVAL", 60.0),
            time_zone=os.environ.get("KUBEKVM_TIME_ZONE") or "UTC",
            schedule_lead_minutes=_env_number("KUBEKVM_SCHEDULE_LEAD_MINUTES", 5),
            scheduler_interval_seconds=_env_number("KUBEKVM_SCHEDULER_INTERVAL", 20.0),
            schedule_grace_seconds=_env_number("KUBEKVM_SCHEDULE_GRACE", 600.0),
            lab_retention_days=_env_number("KUBEKVM_LAB_RETENTION_DAYS", 30),
            lab_expiry_warning_days=_env_number("KUBEKVM_LAB_EXPIRY_WARNING_DAYS", 7),
            lab_unused_days=_env_number("KUBEKVM_LAB_UNUSED_DAYS", 60),
            usage_check_interval_seconds=_env_number("KUBEKVM_USAGE_CHECK_INTERVAL", 60.0),
            db_timeout_seconds=_env_number("KUBEKVM_DB_TIMEOUT", 10.0),
            db_server_selection_seconds=_env_number("KUBEKVM_DB_SERVER_SELECTION_TIMEOUT", 2.0),
            db_write_timeout_seconds=_env_number("KUBEKVM_DB_WRITE_TIMEOUT", 5.0),
            image_store=Path(os.environ.get("KUBEKVM_IMAGE_STORE")
                             or Path(os.environ.get("KUBEKVM_DATA_DIR", ".kubekvm")) / "images"),
            image_max_virtual_gib=_env_number("KUBEKVM_IMAGE_MAX_VIRTUAL_GIB", 256),
            image_max_upload_gib=_env_number("KUBEKVM_IMAGE_MAX_UPLOAD_GIB", 64),
            image_tool_timeout_seconds=_env_number("KUBEKVM_IMAGE_TOOL_TIMEOUT", 1800.0),
            metrics_lease_seconds=_env_number("KUBEKVM_METRICS_LEASE", 60.0),
            log_format=_log_format(os.environ.get("KUBEKVM_LOG_FORMAT", "text")),
            identity=IdentitySettings.from_environment(),
        )


def _log_format(raw: str) -> str:
    value = raw.strip().lower() or "text"
    if value not in ("text", "json"):
        raise SystemExit(f"KUBEKVM_LOG_FORMAT must be text or json, got {raw!r}")
    return value


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(name)
    return Path(raw) if raw else None
