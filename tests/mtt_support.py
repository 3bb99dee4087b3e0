"""Helpers for the MTT client, OAuth and token manager tests (plain functions, not fixtures)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import aiohttp
import structlog

from router.config import MttConfig
from router.logs import setup_daemon_logging
from router.metrics import Metrics
from router.mtt.auth import TokenManager
from router.mtt.oauth import OAuthClient
from router.mtt.tokens import TokenSet
from router.simulator import Simulator
from router.state.memory import MemoryOAuthStates, MemoryTokenStore
from router.state.protocols import TokenStore

REDIRECT_URI = "https://oauth.myanycrm.ru/mtt"
"""The document's example redirect URI (the simulator accepts any)."""


def mtt_config(sim: Simulator, *, redirect_uri: str = REDIRECT_URI) -> MttConfig:
    """An :class:`MttConfig` pointing OAuth and API at the simulator with its credentials."""
    return MttConfig(
        client_id=sim.config.client_id,
        client_secret=sim.config.client_secret,
        redirect_uri=redirect_uri,
        oauth_url=sim.url,
        api_url=sim.url,
    )


def issued_set(sim: Simulator, *, age_s: float = 0.0, version: int = 1) -> TokenSet:
    """A token set the simulator really issued, as if obtained ``age_s`` seconds ago."""
    return TokenSet.from_response(sim.issue_tokens(), now=time.time() - age_s, version=version)


def expired_set(sim: Simulator, *, version: int = 1) -> TokenSet:
    """Live in the simulator, but its access token is past expiry by our clock."""
    return issued_set(sim, age_s=sim.config.access_ttl_s + 60, version=version)


def manager(
    session: aiohttp.ClientSession,
    sim: Simulator,
    store: TokenStore | None = None,
    *,
    metrics: Metrics | None = None,
    states: MemoryOAuthStates | None = None,
    clock: Callable[[], float] = time.time,
    poll_s: float = 15.0,
    min_refresh_interval_s: float = 5.0,
    monotonic: Callable[[], float] = time.monotonic,
) -> TokenManager:
    """A token manager on the simulator with memory stores unless given."""
    metrics = metrics or Metrics()
    return TokenManager(
        OAuthClient(session, mtt_config(sim), metrics),
        store if store is not None else MemoryTokenStore(),
        states if states is not None else MemoryOAuthStates(),
        metrics,
        clock=clock,
        poll_s=poll_s,
        min_refresh_interval_s=min_refresh_interval_s,
        monotonic=monotonic,
    )


async def follow_authorize(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """Open the authorize URL like a browser whose user logs in; ``(code, state)`` from MTT."""
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    return query["code"][0], query["state"][0]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of one metric sample (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@contextmanager
def json_logs(level: str = "debug") -> Iterator[io.StringIO]:
    """Send structlog's JSON lines to a buffer for the duration; restore the defaults after."""
    buffer = io.StringIO()
    setup_daemon_logging("json", level, stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
