"""Configuration: one YAML file, loaded and validated before any socket is bound.

``load_config`` returns a frozen :class:`Config` or raises :class:`ConfigError` with one message per
problem, each naming its key (``mtt.api_url: must be an absolute http(s) URL``). It never exits: the
CLI turns the error into exit code 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from router.config_read import (
    LEVELS,
    Reader,
    expand_env,
    http_url,
    int_in,
    is_loopback,
    networks,
    non_empty,
)
from router.config_redis import RedisOptions, read_redis_section, storage_url
from router.errors import ConfigError
from router.numbers import try_normalize

SCOPE = "https://mtt.ru/auth.tokens.readwrite"


@dataclass(frozen=True)
class HostPort:
    """A ``host:port`` listen address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MttConfig:
    """Where MTT is and who we are to it."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    oauth_url: str = "https://oauth.mtt.ru"
    api_url: str = "https://openapi.mtt.ru"
    centrex_id: str = ""
    """The account's centrexId: a notification naming only other accounts is refused (403)."""

    @property
    def callback_path(self) -> str:
        """Path P of ``redirect_uri``: where MTT sends the browser back with ``?code=``."""
        path = urlsplit(self.redirect_uri).path.rstrip("/")
        return path or "/"

    @property
    def events_path(self) -> str:
        """``P/events``: where MTT POSTs notifications."""
        base = self.callback_path.rstrip("/")
        return f"{base}/events"


@dataclass(frozen=True)
class ServerConfig:
    """The two listeners: public (MTT-facing) and admin (operators and Prometheus)."""

    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 9100)
    admin_token: str | None = field(default=None, repr=False)
    max_inflight: int = 1000
    """Decisions in progress at once; a parked call over the cap is left to the PBX (``shed``)."""
    allow_from: tuple[str, ...] = ()
    """CIDRs allowed to ``POST P/events``; empty: anyone (warned at start-up)."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of proxies whose ``X-Forwarded-For`` / ``X-Real-IP`` is believed."""
    read_timeout_s: int = 10
    """A notification's body must arrive within this (408 otherwise)."""
    workers: int = 1
    """Daemon processes sharing ``listen`` (SO_REUSEPORT) under one supervisor; more than one
    needs a Redis storage (:func:`workers_problems`, :mod:`router.supervisor`)."""


@dataclass(frozen=True)
class RulesConfig:
    """Where routing rules come from."""

    source: Literal["file", "redis"] = "file"
    path: str = "rules/example.yaml"


@dataclass(frozen=True)
class RoutingConfig:
    """Knobs of the decision path."""

    decision_budget_ms: int = 3500
    park: tuple[str, ...] | Literal["all"] = ()
    mode: Literal["live", "shadow"] = "live"
    """``shadow``: decide and log every call, transfer nobody, release each call at once."""
    live_numbers: tuple[str, ...] = ()
    """When set, only calls to these external numbers are live; the rest are shadow."""


@dataclass(frozen=True)
class LogConfig:
    """Logging output."""

    format: Literal["json", "console"] = "json"
    level: str = "info"
    capture: str = ""
    """A JSONL file that gets every POST to ``P/events`` as received (empty: no capture)."""
    capture_max_mb: int = 100
    capture_keep: int = 5
    mask_numbers: bool = False
    """Log lines show callers as ``+7921***2761`` (the capture keeps full numbers)."""


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    mtt: MttConfig
    server: ServerConfig = ServerConfig()
    storage: str = field(default="memory", repr=False)  # a Redis URL may carry a password
    storage_prefix: str = "mtt-router:"
    redis: RedisOptions = field(default_factory=RedisOptions)
    """TLS files and the sentinels' login (the ``redis:`` section), for a Redis ``storage``."""
    tokens_file: str = "tokens.json"
    rules: RulesConfig = RulesConfig()
    routing: RoutingConfig = RoutingConfig()
    log: LogConfig = LogConfig()

    @property
    def uses_redis(self) -> bool:
        """True when ``storage`` is a Redis URL."""
        return self.storage != "memory"


MAX_WORKERS = 64


def workers_problems(server: ServerConfig, storage: str, key: str = "server.workers") -> list[str]:
    """Why ``server.workers`` (named ``key``: the flag overriding it) cannot run, if it cannot:
    workers share nothing in memory, and each needs the public port and an admin port."""
    n = server.workers
    if n == 1:
        return []
    problems = []
    if storage == "memory":
        problems.append(
            f"{key}: {n} workers need a Redis storage (storage: redis://...): with memory "
            "storage each worker would keep its own call claims and tokens"
        )
    if server.listen.port == 0:
        problems.append(f"server.listen: {n} workers share one port: name it (not 0)")
    admin = server.admin_listen.port
    if admin == 0 or admin + n > 65535:
        problems.append(
            f"server.admin_listen: worker i listens on its port + i (1..{n}): "
            f"name a port from 1 to {65535 - n}, got {admin}"
        )
    return problems


def _host_port(reader: Reader, data: Mapping[str, Any], key: str, default: HostPort) -> HostPort:
    raw = data.get(key)
    if raw is None:
        return default
    name = f"server.{key}"
    if not isinstance(raw, str):
        reader.problems.append(f"{name}: must be a 'host:port' string")
        return default
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        reader.problems.append(f"{name}: must be 'host:port' with a port 0-65535, got {raw!r}")
        return default
    return HostPort(host.strip("[]"), int(port))


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise :class:`ConfigError` listing every problem."""
    reader = Reader()
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"])
    data = expand_env(data, os.environ if env is None else env, "", reader.problems)
    top = reader.section(
        data,
        "",
        (
            "mtt",
            "server",
            "storage",
            "storage_prefix",
            "redis",
            "tokens_file",
            "rules",
            "routing",
            "log",
        ),
    )

    m = reader.section(
        top.get("mtt"),
        "mtt",
        ("client_id", "client_secret", "redirect_uri", "oauth_url", "api_url", "centrex_id"),
    )
    if "mtt" not in top:
        reader.problems.append("mtt: required")
    mtt = MttConfig(
        client_id=reader.string(m, "client_id", "mtt", check=non_empty),
        client_secret=reader.string(m, "client_secret", "mtt", check=non_empty),
        redirect_uri=reader.string(m, "redirect_uri", "mtt", check=http_url),
        oauth_url=reader.string(m, "oauth_url", "mtt", "https://oauth.mtt.ru", http_url).rstrip(
            "/"
        ),
        api_url=reader.string(m, "api_url", "mtt", "https://openapi.mtt.ru", http_url).rstrip("/"),
        centrex_id=reader.string(m, "centrex_id", "mtt", "").strip(),
    )

    s = reader.section(
        top.get("server"),
        "server",
        (
            "listen",
            "admin_listen",
            "admin_token",
            "max_inflight",
            "allow_from",
            "trusted_proxies",
            "read_timeout_s",
            "workers",
        ),
    )
    max_inflight = int_in(reader, s, "server.max_inflight", 1000, 1, 1_000_000)
    admin_token = s.get("admin_token")
    if admin_token is not None and (not isinstance(admin_token, str) or len(admin_token) < 16):
        reader.problems.append("server.admin_token: must be a string of at least 16 characters")
        admin_token = None
    server = ServerConfig(
        listen=_host_port(reader, s, "listen", ServerConfig.listen),
        admin_listen=_host_port(reader, s, "admin_listen", ServerConfig.admin_listen),
        admin_token=admin_token or None,
        max_inflight=max_inflight,
        allow_from=networks(reader, s, "server.allow_from"),
        trusted_proxies=networks(reader, s, "server.trusted_proxies"),
        read_timeout_s=int_in(reader, s, "server.read_timeout_s", 10, 1, 300),
        workers=int_in(reader, s, "server.workers", 1, 1, MAX_WORKERS),
    )
    if not is_loopback(server.admin_listen.host) and server.admin_token is None:
        # The admin listener hands out OAuth logins and client edits: off loopback, only a token
        # stands between it and whoever can reach the port.
        reader.problems.append(
            f"server.admin_token: required when server.admin_listen ({server.admin_listen}) is "
            "not loopback"
        )

    r = reader.section(top.get("rules"), "rules", ("source", "path"))
    source = reader.string(r, "source", "rules", "file")
    if source not in ("file", "redis"):
        reader.problems.append(f"rules.source: must be 'file' or 'redis', got {source!r}")
        source = "file"
    rules = RulesConfig(
        source="redis" if source == "redis" else "file",
        path=reader.string(r, "path", "rules", "rules/example.yaml", non_empty),
    )

    ro = reader.section(
        top.get("routing"), "routing", ("decision_budget_ms", "park", "mode", "live_numbers")
    )
    budget = int_in(reader, ro, "routing.decision_budget_ms", 3500, 100, 5000)
    park_raw = ro.get("park", [])
    park: tuple[str, ...] | Literal["all"] = ()
    if park_raw == "all":
        park = "all"
    elif isinstance(park_raw, list) and all(isinstance(n, str | int) for n in park_raw):
        park = tuple(str(n) for n in park_raw)
    else:
        reader.problems.append("routing.park: must be 'all' or a list of external numbers")
    mode = reader.string(ro, "mode", "routing", "live")
    if mode not in ("live", "shadow"):
        reader.problems.append(f"routing.mode: must be 'live' or 'shadow', got {mode!r}")
        mode = "live"
    live_raw = ro.get("live_numbers", [])
    live_numbers: tuple[str, ...] = ()
    if isinstance(live_raw, list) and all(isinstance(n, str | int) for n in live_raw):
        live_numbers = tuple(str(n) for n in live_raw)
        # A typo must not make every line live (an empty list means "all live").
        for bad in (n for n in live_numbers if try_normalize(n) is None):
            reader.problems.append(f"routing.live_numbers: not a phone number: {bad!r}")
    else:
        reader.problems.append("routing.live_numbers: must be a list of external numbers")
    routing = RoutingConfig(
        decision_budget_ms=budget,
        park=park,
        mode="shadow" if mode == "shadow" else "live",
        live_numbers=live_numbers,
    )

    lg = reader.section(
        top.get("log"),
        "log",
        ("format", "level", "capture", "capture_max_mb", "capture_keep", "mask_numbers"),
    )
    fmt = reader.string(lg, "format", "log", "json")
    if fmt not in ("json", "console"):
        reader.problems.append(f"log.format: must be 'json' or 'console', got {fmt!r}")
        fmt = "json"
    level = reader.string(lg, "level", "log", "info").lower()
    if level not in LEVELS:
        reader.problems.append(f"log.level: must be one of {', '.join(LEVELS)}, got {level!r}")
        level = "info"
    mask = lg.get("mask_numbers", False)
    if not isinstance(mask, bool):
        reader.problems.append(f"log.mask_numbers: must be true or false, got {mask!r}")
        mask = False
    log = LogConfig(
        format="console" if fmt == "console" else "json",
        level=level,
        capture=reader.string(lg, "capture", "log", ""),
        capture_max_mb=int_in(reader, lg, "log.capture_max_mb", 100, 1, 100_000),
        capture_keep=int_in(reader, lg, "log.capture_keep", 5, 1, 1000),
        mask_numbers=mask,
    )

    storage = reader.string(top, "storage", "", "memory", storage_url)
    prefix = reader.string(top, "storage_prefix", "", "mtt-router:")
    redis = read_redis_section(reader, top.get("redis"), storage)
    tokens_file = reader.string(top, "tokens_file", "", "tokens.json", non_empty)
    if rules.source == "redis" and storage == "memory":
        reader.problems.append("rules.source: 'redis' needs storage to be a redis:// URL")
    reader.problems.extend(workers_problems(server, storage))

    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(
        mtt=mtt,
        server=server,
        storage=storage,
        storage_prefix=prefix,
        redis=redis,
        tokens_file=tokens_file,
        rules=rules,
        routing=routing,
        log=log,
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML config at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    return parse_config(data, env)
