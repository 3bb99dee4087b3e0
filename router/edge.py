"""Who may post notifications: the source allow-list, trusted proxies, and the sources seen.

MTT signs nothing, so ``POST P/events`` is guarded by the source address: ``server.allow_from``
(CIDRs; empty = anyone). The address is the peer's, unless the peer is one of
``server.trusted_proxies``: then it is the right-most address of ``X-Forwarded-For`` (or
``X-Real-IP``) that is not a trusted proxy, since each proxy appends what it saw and only the
proxies we trust can be believed. MTT's document names no source addresses, so
:class:`SourceGuard` also remembers the sources of the last 24 hours for ``/status``: an operator
fills ``allow_from`` from what MTT really uses.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from router.bounds import Bound

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SOURCES_MAX = 1000
"""Distinct source addresses remembered; beyond it the least recently seen is forgotten."""
SOURCES_WINDOW_S = 24 * 3600.0


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ``ValueError`` naming the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {value!r}") from None
    return tuple(networks)


def _in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # not an address (a unix socket, a garbage header): in no network
    return any(ip in network for network in networks)


class SourceGuard:
    """The allow-list and the trusted proxies (both replaceable on SIGHUP), and the sources seen.

    Worst-case memory: :data:`SOURCES_MAX` addresses of at most 64 characters and four numbers
    each, some 300 KB.
    """

    def __init__(
        self,
        allow_from: Sequence[str] = (),
        trusted_proxies: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._allow: tuple[Network, ...] = ()
        self._trusted: tuple[Network, ...] = ()
        # address -> [first seen, last seen, posts, refused], least recently seen first; a list
        # updated in place, since every notification lands here (one small list per source).
        self._sources: OrderedDict[str, list[float]] = OrderedDict()
        self.set(allow_from, trusted_proxies)

    def set(self, allow_from: Sequence[str], trusted_proxies: Sequence[str]) -> bool:
        """Replace both lists; True when the allow-list changed."""
        allow = parse_networks(allow_from)
        changed = allow != self._allow
        self._allow, self._trusted = allow, parse_networks(trusted_proxies)
        return changed

    def bound(self) -> Bound:
        """Sources remembered, and the most there can be."""
        return Bound(len(self._sources), SOURCES_MAX)

    @property
    def open(self) -> bool:
        """True when anyone may post (no allow-list)."""
        return not self._allow

    def client_address(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The address to judge: the peer's, or what a trusted proxy says the client was.

        Every ``X-Forwarded-For`` line counts, in order: a proxy that adds its own line rather
        than extending the client's must not let the client's forged first line through.
        ``X-Real-IP`` is read only without any ``X-Forwarded-For``: the trusted proxy must set
        (overwrite) one of them.
        """
        if peer is None or not self._trusted or not _in(peer, self._trusted):
            return peer
        getall = getattr(headers, "getall", None)
        lines: list[str] = (
            list(getall("X-Forwarded-For", [])) if getall else [headers.get("X-Forwarded-For", "")]
        )
        forwarded = [a.strip() for line in lines for a in line.split(",") if a.strip()]
        for address in reversed(forwarded):
            if not _in(address, self._trusted):
                return address
        if forwarded:
            return forwarded[0]  # only trusted proxies in the chain: the first one of them
        return headers.get("X-Real-IP", "").strip() or peer

    def admit(self, address: str | None) -> bool:
        """True when ``address`` may post; the source is remembered either way."""
        allowed = not self._allow or (address is not None and _in(address, self._allow))
        self._remember((address or "unknown")[:64], allowed)
        return allowed

    def _remember(self, address: str, allowed: bool) -> None:
        now = self._clock()
        seen = self._sources.get(address)
        if seen is None:
            self._sources[address] = [now, now, 1, 0 if allowed else 1]
            while len(self._sources) > SOURCES_MAX:
                self._sources.popitem(last=False)
            return
        seen[1] = now
        seen[2] += 1
        if not allowed:
            seen[3] += 1
        self._sources.move_to_end(address)

    def sources(self) -> list[dict[str, Any]]:
        """The sources of the last 24 h, most recent first, for ``/status``."""
        since = self._clock() - SOURCES_WINDOW_S
        return [
            {
                "address": address,
                "first_seen": first,
                "last_seen": last,
                "posts": int(posts),
                "refused": int(refused),
                "allowed": not self._allow or _in(address, self._allow),
            }
            for address, (first, last, posts, refused) in reversed(self._sources.items())
            if last >= since
        ]
