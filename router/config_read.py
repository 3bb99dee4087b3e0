"""Reading a parsed YAML config: problems collected (one line each, naming the key), value checks,
``${VAR}`` from the environment. :mod:`router.config` builds the model with these.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

LEVELS = ("debug", "info", "warning", "error", "critical")


class Reader:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def section(self, data: Any, name: str, known: tuple[str, ...]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problems.append(f"{name}: must be a mapping")
            return {}
        for key in data:
            if key not in known:
                self.problems.append(f"{join(name, str(key))}: unknown key")
        return data

    def string(
        self,
        data: Mapping[str, Any],
        key: str,
        where: str,
        default: str | None = None,
        check: Callable[[str], str | None] | None = None,
    ) -> str:
        name = join(where, key)
        value = data.get(key, default)
        if value is None:
            self.problems.append(f"{name}: required")
            return ""
        if not isinstance(value, str):
            self.problems.append(f"{name}: must be a string, not {type(value).__name__}")
            return ""
        if check is not None and (problem := check(value)) is not None:
            self.problems.append(f"{name}: {problem}")
        return value


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; a host name counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name may resolve to anything: assume the worse


def join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"must be an absolute http(s) URL, got {value!r}"
    return None


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def int_in(
    reader: Reader, data: Mapping[str, Any], name: str, default: int, lo: int, hi: int
) -> int:
    """The integer at ``name`` (``section.key``) in ``lo..hi``, else a problem and ``default``."""
    value = data.get(name.rpartition(".")[2], default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        reader.problems.append(f"{name}: must be an integer from {lo} to {hi}, got {value!r}")
        return default
    return value


def expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` in every string of a parsed YAML tree with the environment's value."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                problems.append(f"{path}: environment variable {var} is not set")
                return match.group(0)
            return env[var]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, join(path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def networks(reader: Reader, data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list of addresses or CIDRs at ``name`` (``section.key``), each checked."""
    raw = data.get(name.rpartition(".")[2], [])
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        reader.problems.append(f"{name}: must be a list of addresses or CIDRs")
        return ()
    for value in raw:
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            reader.problems.append(f"{name}: not an address or CIDR: {value!r}")
    return tuple(v.strip() for v in raw)
