"""The ``storage`` URL and the ``redis:`` section of the config, parsed and checked (pure).

Storage URLs:

- ``memory``;
- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path``: one
  Redis server, read by redis-py's own URL parser;
- ``redis+sentinel://[[user]:password@]s1[:port],s2[:port],.../service[/db]`` (``rediss+sentinel``
  for TLS): the sentinels (port 26379 by default) name the primary of ``service``, and the daemon
  follows a failover to the new one. The user and password are the *data nodes'* (primary and
  replicas); the sentinels' own login, if they have one, is ``redis.sentinel_password``. TLS
  applies to the sentinels and the data nodes alike.

The ``redis:`` section holds what does not fit a URL: the TLS files and the sentinels' login.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from router.config_read import Reader

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
TLS_SCHEMES = ("rediss", "rediss+sentinel")
SENTINEL_PORT = 26379

_FILE_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")
_SENTINEL_KEYS = ("sentinel_username", "sentinel_password")
REDIS_KEYS = (*_FILE_KEYS, "tls_verify_hostname", *_SENTINEL_KEYS)


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` storage URL, taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def where(self) -> str:
        """``service@s1:port,s2:port`` (no password), for logs and reports."""
        hosts = ",".join(_host_port(h, p) for h, p in self.sentinels)
        return f"{self.service}@{hosts}"


@dataclass(frozen=True)
class RedisOptions:
    """The ``redis:`` section: TLS files and the sentinels' own login."""

    tls_ca_file: str = ""
    """CA bundle the servers' certificates are verified against (empty: the system's)."""
    tls_cert_file: str = ""
    """Client certificate (PEM), for servers that require one (``tls-auth-clients yes``)."""
    tls_key_file: str = ""
    """Its private key, when not in ``tls_cert_file``."""
    tls_verify_hostname: bool = True
    """The certificate must name the host connected to (with Sentinel: the address it reports)."""
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://``."""
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def is_tls_url(url: str) -> bool:
    """True for ``rediss://`` and ``rediss+sentinel://``."""
    return url.partition("://")[0].lower() in TLS_SCHEMES


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_host(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad sentinel address {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"bad sentinel address {item!r}")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in sentinel address {item!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of a sentinel URL; ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// URL")
    if parts.query or parts.fragment:
        raise ValueError("a sentinel URL takes no ?query or #fragment (TLS files: redis: section)")
    creds, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise ValueError("no sentinel address (redis+sentinel://host:26379,.../service)")
    sentinels = tuple(_parse_host(item.strip()) for item in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError("no service name (redis+sentinel://host:26379/mymaster/0)")
    if len(path) > 2 or (len(path) == 2 and path[1] and not path[1].isdigit()):
        raise ValueError("the path must be /service or /service/db with a numeric db")
    db = int(path[1]) if len(path) == 2 and path[1] else 0
    return SentinelUrl(sentinels, path[0], db, username, password, tls=scheme == "rediss+sentinel")


def storage_url(value: str) -> str | None:
    """Why ``value`` cannot be ``storage`` (``None`` when it can)."""
    if value == "memory":
        return None
    if is_sentinel_url(value):
        try:
            parse_sentinel_url(value)
        except ValueError as exc:
            return f"{exc}, got {_redacted(value)!r}"
        return None
    parts = urlsplit(value)
    if parts.scheme not in PLAIN_SCHEMES or not (parts.netloc or parts.path):
        return (
            "must be 'memory' or a redis:// URL (or rediss://, unix://, redis+sentinel://, "
            f"rediss+sentinel://), got {_redacted(value)!r}"
        )
    return None


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _readable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"


def read_redis_section(reader: Reader, data: Any, storage: str) -> RedisOptions:
    """The ``redis:`` section, each key checked against ``storage`` (problems into ``reader``)."""
    section: Mapping[str, Any] = reader.section(data, "redis", REDIS_KEYS)
    values = {k: reader.string(section, k, "redis", "") for k in (*_FILE_KEYS, *_SENTINEL_KEYS)}
    verify = section.get("tls_verify_hostname", True)
    if not isinstance(verify, bool):
        reader.problems.append(f"redis.tls_verify_hostname: must be true or false, got {verify!r}")
        verify = True
    # A key at its default is harmless anywhere (config.example.yaml shows them all).
    tls, sentinel = is_tls_url(storage), is_sentinel_url(storage)
    not_tls = "only read with a TLS storage URL (rediss:// or rediss+sentinel://)"
    for key in _FILE_KEYS:
        if values[key] and not tls:
            reader.problems.append(f"redis.{key}: {not_tls}")
        elif values[key] and (problem := _readable(os.path.expanduser(values[key]))):
            reader.problems.append(f"redis.{key}: {problem}")
    if not verify and not tls:
        reader.problems.append(f"redis.tls_verify_hostname: {not_tls}")
    if values["tls_key_file"] and not values["tls_cert_file"]:
        reader.problems.append("redis.tls_key_file: needs redis.tls_cert_file")
    for key in _SENTINEL_KEYS:
        if values[key] and not sentinel:
            reader.problems.append(f"redis.{key}: only read with a redis+sentinel:// storage URL")
    if values["sentinel_username"] and not values["sentinel_password"]:
        reader.problems.append("redis.sentinel_password: required with redis.sentinel_username")
    return RedisOptions(
        tls_ca_file=os.path.expanduser(values["tls_ca_file"]),
        tls_cert_file=os.path.expanduser(values["tls_cert_file"]),
        tls_key_file=os.path.expanduser(values["tls_key_file"]),
        tls_verify_hostname=verify,
        sentinel_username=values["sentinel_username"],
        sentinel_password=values["sentinel_password"],
    )
