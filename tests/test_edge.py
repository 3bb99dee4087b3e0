"""Who may post notifications (router.edge): allow-list, trusted proxies, the sources seen."""

from __future__ import annotations

import pytest

from router.edge import SOURCES_MAX, SourceGuard, parse_networks


def test_without_an_allow_list_anyone_may_post() -> None:
    """allow_from empty: every source is admitted (and the guard says it is open)."""
    guard = SourceGuard()
    assert guard.open
    assert guard.admit("203.0.113.7")
    assert guard.admit(None)


def test_only_allowed_networks_may_post() -> None:
    """allow_from: addresses inside the CIDRs pass, others and garbage do not."""
    guard = SourceGuard(["203.0.113.0/24", "2001:db8::/32", "198.51.100.9"])
    assert not guard.open
    assert [guard.admit(a) for a in ("203.0.113.7", "2001:db8::1", "198.51.100.9")] == [True] * 3
    assert [guard.admit(a) for a in ("203.0.114.1", "::1", "not an ip", None)] == [False] * 4


def test_forwarded_headers_are_believed_only_from_trusted_proxies() -> None:
    """The right-most X-Forwarded-For address that is not a trusted proxy is the client."""
    guard = SourceGuard(trusted_proxies=["10.0.0.0/8"])
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
    assert guard.client_address("10.0.0.1", forwarded) == "203.0.113.7"
    assert guard.client_address("192.0.2.1", forwarded) == "192.0.2.1"  # not a trusted peer
    assert guard.client_address("10.0.0.1", {"X-Real-IP": "203.0.113.9"}) == "203.0.113.9"
    assert guard.client_address("10.0.0.1", {"X-Forwarded-For": "10.0.0.3"}) == "10.0.0.3"
    assert guard.client_address("10.0.0.1", {}) == "10.0.0.1"
    assert SourceGuard().client_address("10.0.0.1", forwarded) == "10.0.0.1"  # no proxies


def test_sources_of_the_last_day_most_recent_first_and_bounded() -> None:
    """Each source once, with counts of posts and refusals; older than 24 h or beyond the bound
    it is forgotten."""
    now = [1000.0]
    guard = SourceGuard(["203.0.113.0/24"], clock=lambda: now[0])
    guard.admit("203.0.113.7")
    now[0] += 10
    guard.admit("192.0.2.1")
    guard.admit("203.0.113.7")
    listed = guard.sources()
    assert [(s["address"], s["posts"], s["refused"], s["allowed"]) for s in listed] == [
        ("203.0.113.7", 2, 0, True),
        ("192.0.2.1", 1, 1, False),
    ]
    now[0] += 24 * 3600 + 1
    assert guard.sources() == []
    for i in range(SOURCES_MAX + 5):
        guard.admit(f"10.{i // 256 % 256}.{i % 256}.1")
    assert len(guard.sources()) == SOURCES_MAX


def test_set_reports_a_changed_allow_list_and_bad_networks_are_named() -> None:
    """set() (SIGHUP) says whether the allow-list changed; a bad CIDR raises naming it."""
    guard = SourceGuard(["203.0.113.0/24"])
    assert not guard.set(["203.0.113.0/24"], [])
    assert guard.set([], [])
    assert guard.open
    with pytest.raises(ValueError, match="not an address or CIDR: 'nonsense'"):
        parse_networks(["nonsense"])


def test_every_forwarded_line_counts() -> None:
    """A proxy that adds its own X-Forwarded-For line: the client's forged first line loses."""
    from multidict import CIMultiDict

    guard = SourceGuard(["203.0.113.0/24"], ["10.0.0.0/8"])
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "192.0.2.66")])
    assert guard.client_address("10.0.0.1", headers) == "192.0.2.66"
    assert not guard.admit(guard.client_address("10.0.0.1", headers))
    both = CIMultiDict([("X-Forwarded-For", "192.0.2.66"), ("X-Real-IP", "203.0.113.7")])
    assert guard.client_address("10.0.0.1", both) == "192.0.2.66"  # X-Real-IP only without XFF
