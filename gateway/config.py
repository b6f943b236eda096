"""Configuration: ``config.toml`` read once at start-up into frozen, typed dataclasses.

Nothing reads configuration from a global: the loaded :class:`Config` is passed explicitly.
A mistake in the file is reported as one :class:`ConfigError` that names the key and the fix,
so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

DEFAULT_CONFIG_ENV = "CAREBRIDGE_CONFIG"


@dataclass(frozen=True)
class StoreConfig:
    url: str = "sqlite+aiosqlite:///var/carebridge.db"
    # Echo SQL statements; never enable in production (values are encrypted, but still).
    echo: bool = False
    pool_size: int = 5


@dataclass(frozen=True)
class KeysConfig:
    file: str = "var/keys.json"


@dataclass(frozen=True)
class SmtpConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:2525"
    hostname: str = "mx.carebridge.localhost"
    max_message_bytes: int = 10 * 1024 * 1024
    tls_cert: str = ""
    tls_key: str = ""
    require_starttls: bool = False
    max_connections_per_ip: int = 20
    max_recipients: int = 50
    # Seconds a session may stay idle before it is closed.
    timeout: int = 300


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:8025"
    base_url: str = "http://127.0.0.1:8025"
    # Cookies are marked Secure unless the base URL is plain http (local development).
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12
    # Online enrolment answers no sooner than this, so its timing cannot tell an existing
    # account (little work) from a new one (enrolment + invitation).
    enrol_min_answer_ms: int = 300
    # Input limits, checked before anything else reads a request (gateway/web/limits.py).
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    max_json_bytes: int = 1024 * 1024
    max_form_bytes: int = 256 * 1024
    # /metrics: with a token file, only "Authorization: Bearer <its content>" is answered;
    # with metrics_listen, it is served on that address only (not on the web port); with
    # neither, only loopback clients of the web port get it.
    metrics_token_file: str = ""
    metrics_listen: str = ""


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = True
    relay: str = ""
    maildir: str = ""
    # One delivery loop per node keeps up to workers x claim_batch sends in flight, at most
    # per_domain_concurrency of them to any one recipient domain.
    workers: int = 4
    per_domain_concurrency: int = 4
    # Sends per node that may be past their DATA command with the answer not yet on disk. A
    # crash re-sends at most this many messages the relay already took (1: at most one
    # duplicate per crash; more: faster to distant MXs, up to that many duplicates).
    max_unconfirmed: int = 1
    max_age_hours: int = 72
    base_backoff_seconds: int = 60
    max_backoff_seconds: int = 3600
    coalesce_seconds: int = 120
    timeout_seconds: int = 60
    # Port of recipients' MX hosts (tests and bench point it at a loopback sink).
    mx_port: int = 25
    # Extra CA bundle (PEM) trusted when a clinic requires verified TLS; empty: system CAs.
    tls_ca_file: str = ""
    # Local part of the From address on the clinic's sending domain.
    from_local_part: str = "notifications"
    # Rows one worker claims per round trip, and how long a claim lasts before a crashed
    # worker's rows are retried by another.
    claim_batch: int = 20
    lease_seconds: int = 300
    # How often idle workers look for due rows (they are also woken by new work).
    poll_seconds: float = 1.0


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    timeout_seconds: float = 5.0
    # Records 'carebridge domain dns' asks clinics to publish (see gateway/admin/domains.py).
    # SPF mechanisms authorising the senders; empty means "a:<[smtp] hostname>".
    spf_mechanisms: tuple[str, ...] = ()
    dmarc_policy: str = "quarantine"
    # DMARC aggregate reports go here; empty means postmaster@<reply domain>.
    dmarc_rua: str = ""
    # "" (no MTA-STS/TLS-RPT records), "testing" or "enforce".
    mta_sts_mode: str = ""
    # A DKIM key replaced by rotation stays published this long before check retires it.
    dkim_retire_after_days: int = 7


@dataclass(frozen=True)
class TokensConfig:
    """Lifetime of each token purpose, in hours."""

    registration_hours: int = 72
    view_thread_hours: int = 24 * 14
    password_reset_hours: int = 1
    unsubscribe_hours: int = 24 * 365
    reply_address_hours: int = 24 * 30
    bounce_address_hours: int = 24 * 14


@dataclass(frozen=True)
class InboundConfig:
    # Authentication-Results headers are believed only when stamped by this authserv-id,
    # only the topmost block of them, and only from the hop that wrote them: the configured
    # IMAP server, or an SMTP client connecting from trusted_relays.
    trusted_authserv_id: str = ""
    # SMTP clients (CIDR networks, e.g. ["192.0.2.25/32"]) whose Authentication-Results
    # are believed. Empty: no SMTP client's are.
    trusted_relays: tuple[str, ...] = ()
    max_header_bytes: int = 64 * 1024
    parse_timeout_seconds: float = 5.0
    # Header values over these sizes (bytes, folded lines included) are refused at DATA
    # (554): address headers (From, Sender, Reply-To, To, Cc, ...) and any other header.
    max_address_header_bytes: int = 4096
    max_header_value_bytes: int = 16 * 1024
    # Worker processes parsing mail (a parse past its deadline kills its worker).
    parse_workers: int = 2
    # Threads for DKIM/SPF checks; every DNS lookup of one message shares dns_budget_seconds,
    # after which the verdict is temperror. At most max_dkim_signatures are checked.
    auth_threads: int = 4
    dns_budget_seconds: float = 10.0
    max_dkim_signatures: int = 5
    max_automated_per_day: int = 10
    # Messages authenticated and handled at once after they are stored.
    process_concurrency: int = 8
    # Most messages one group commit may hold (concurrent SMTP sessions share a commit).
    group_commit_max: int = 200
    # Every node looks this often for stored messages nobody has processed for
    # adopt_after_seconds (their node died, or is far behind) and processes them itself.
    sweep_seconds: float = 15.0
    adopt_after_seconds: float = 60.0


@dataclass(frozen=True)
class ImapConfig:
    host: str
    user: str
    password_file: str
    port: int = 993
    tls: bool = True
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    poll_seconds: int = 60
    idle: bool = True


@dataclass(frozen=True)
class SchedulerConfig:
    enabled: bool = True
    tick_seconds: float = 30.0
    # Retention: appointments are purged this many days after they took place, and tokens
    # this many days after they expired (kept a while so a late click says "expired").
    retention_days: int = 90
    token_grace_days: int = 7


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    web: WebConfig = field(default_factory=WebConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    imap: dict[str, ImapConfig] = field(default_factory=dict)
    # Directory that relative paths in the file are resolved against.
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against ``base_dir``."""
        prefix = "sqlite+aiosqlite:///"
        url = self.store.url
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.path(rest).resolve())
        return url


_SECTIONS: dict[str, type] = {
    "store": StoreConfig,
    "keys": KeysConfig,
    "smtp": SmtpConfig,
    "web": WebConfig,
    "delivery": DeliveryConfig,
    "dns": DnsConfig,
    "tokens": TokensConfig,
    "inbound": InboundConfig,
    "scheduler": SchedulerConfig,
    "log": LogConfig,
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of strings"
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number"}.get(
        tp, str(tp)
    )


def _coerce(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be {_type_name(tp)}, e.g. {key.split('.')[-1]} = []")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(key, f"must be {_type_name(tp)}, not true/false")
    if not isinstance(value, tp):
        raise ConfigError(key, f"must be {_type_name(tp)}, got {type(value).__name__}")
    return value


def _build(cls: type, section: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(section, "must be a table, e.g. [" + section + "]")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(key, f"is not a known setting; remove it (known: {known})")
        values[name] = _coerce(key, hints[name], value)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in values:
            raise ConfigError(f"{section}.{name}", "is required; add it to the file")
    return cls(**values)


def _check_host_port(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f'must be "host:port", e.g. "127.0.0.1:2525", got {value!r}')


def _validate(cfg: Config) -> None:
    if not (cfg.store.url.startswith("sqlite") or cfg.store.url.startswith("postgresql")):
        raise ConfigError(
            "store.url",
            "must start with sqlite+aiosqlite:/// or postgresql+asyncpg://",
        )
    _check_host_port("smtp.listen", cfg.smtp.listen)
    _check_host_port("web.listen", cfg.web.listen)
    if cfg.web.metrics_listen:
        _check_host_port("web.metrics_listen", cfg.web.metrics_listen)
        if cfg.web.metrics_listen == cfg.web.listen:
            raise ConfigError("web.metrics_listen", "must differ from web.listen")
    for key, floor in (
        ("max_header_bytes", 4096),
        ("max_headers", 20),
        ("max_json_bytes", 1024),
        ("max_form_bytes", 1024),
    ):
        if getattr(cfg.web, key) < floor:
            raise ConfigError(f"web.{key}", f"must be at least {floor}")
    if cfg.delivery.relay:
        _check_host_port("delivery.relay", cfg.delivery.relay)
    if not cfg.web.base_url.startswith(("http://", "https://")):
        raise ConfigError("web.base_url", "must start with http:// or https://")
    if cfg.delivery.lease_seconds <= cfg.delivery.timeout_seconds:
        # A claim must outlive a send, or every send is deferred as "claim nearly expired".
        raise ConfigError(
            "delivery.lease_seconds",
            f"must be greater than delivery.timeout_seconds ({cfg.delivery.timeout_seconds})",
        )
    if cfg.delivery.max_unconfirmed < 1:
        raise ConfigError("delivery.max_unconfirmed", "must be 1 or more")
    for net in cfg.inbound.trusted_relays:
        try:
            ipaddress.ip_network(net, strict=True)
        except ValueError:
            raise ConfigError(
                "inbound.trusted_relays",
                f'entries are networks like "192.0.2.25/32" (no host bits set), got {net!r}',
            ) from None
    for key in (
        "sweep_seconds",
        "adopt_after_seconds",
        "parse_timeout_seconds",
        "dns_budget_seconds",
    ):
        if getattr(cfg.inbound, key) <= 0:
            raise ConfigError(f"inbound.{key}", "must be a number of seconds above 0")
    for key in ("max_address_header_bytes", "max_header_value_bytes"):
        if not 256 <= getattr(cfg.inbound, key) <= cfg.inbound.max_header_bytes:
            raise ConfigError(f"inbound.{key}", "must be between 256 and max_header_bytes")
    for key in ("parse_workers", "auth_threads", "max_dkim_signatures"):
        if not 1 <= getattr(cfg.inbound, key) <= 64:
            raise ConfigError(f"inbound.{key}", "must be between 1 and 64")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError("log.format", 'must be "text" or "json"')
    if bool(cfg.smtp.tls_cert) != bool(cfg.smtp.tls_key):
        raise ConfigError("smtp.tls_cert", "and smtp.tls_key must be set together")
    if cfg.dns.dmarc_policy not in ("none", "quarantine", "reject"):
        raise ConfigError("dns.dmarc_policy", 'must be "none", "quarantine" or "reject"')
    if cfg.dns.mta_sts_mode not in ("", "testing", "enforce"):
        raise ConfigError("dns.mta_sts_mode", 'must be "", "testing" or "enforce"')
    for ns in cfg.dns.nameservers:
        _host, _, port = ns.partition(":") if ns.count(":") == 1 else (ns, "", "")
        if port and not port.isdigit():
            raise ConfigError("dns.nameservers", f'entries are "ip" or "ip:port", got {ns!r}')


def parse_config(raw: dict[str, Any], base_dir: str = ".") -> Config:
    """Turn a parsed TOML document into a :class:`Config`, or raise :class:`ConfigError`."""
    kwargs: dict[str, Any] = {"base_dir": base_dir}
    for name, value in raw.items():
        if name == "imap":
            if not isinstance(value, dict):
                raise ConfigError("imap", "must hold tables such as [imap.clinic1]")
            kwargs["imap"] = {k: _build(ImapConfig, f"imap.{k}", v) for k, v in value.items()}
        elif name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], name, value)
        else:
            known = ", ".join(sorted([*_SECTIONS, "imap"]))
            raise ConfigError(name, f"is not a known section; remove it (known: {known})")
    cfg = Config(**kwargs)
    _validate(cfg)
    return cfg


def find_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(DEFAULT_CONFIG_ENV)
    if env:
        return Path(env)
    return Path("config.toml")


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the configuration file."""
    p = find_config_path(str(path) if path else None)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "--config", f"file {str(p)!r} not found; pass --config PATH or set CAREBRIDGE_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {str(p)!r}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"is not valid TOML ({exc}); fix the syntax") from None
    return parse_config(raw, base_dir=str(p.resolve().parent))
