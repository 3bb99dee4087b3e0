"""TokenManager when things go wrong around it: the store fails, a sibling rotates the refresh
token under us, the refresh token runs out, MTT does not rotate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from router.config import MttConfig
from router.errors import NeedsLoginError
from router.metrics import Metrics
from router.mtt.auth import TokenManager
from router.mtt.client import MttClient, make_session
from router.mtt.oauth import OAuthClient
from router.mtt.tokens import TokenSet
from router.simulator import Simulator
from router.state.memory import MemoryOAuthStates, MemoryTokenStore
from tests.mtt_support import (
    expired_set,
    follow_authorize,
    issued_set,
    json_logs,
    manager,
    mtt_config,
    sample,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The production session factory, closed after the test."""
    session = make_session()
    yield session
    await session.close()


class FlakyStore(MemoryTokenStore):
    """A memory store whose next ``fail_saves`` saves raise, like a full disk or Redis outage."""

    def __init__(self, tokens: TokenSet | None = None) -> None:
        super().__init__(tokens)
        self.fail_saves = 0
        self.events: list[tuple[str, str, float]] = []

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
        if self.fail_saves:
            self.fail_saves -= 1
            raise OSError(28, "No space left on device")
        ok = await super().save(tokens, expected_version=expected_version)
        self.events.append(("save", tokens.refresh_token, time.monotonic()))
        return ok


async def test_store_outage_keeps_tokens_and_persists_them_before_next_refresh(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """A refreshed set that cannot be saved is used, then saved before its refresh token is."""
    store = FlakyStore(expired_set(sim))
    skew = [0.0]
    tm = manager(session, sim, store, clock=lambda: time.time() + skew[0])
    await tm.load()
    store.fail_saves = 1
    with json_logs() as logs:
        token = await tm.access_token()
    assert "tokens_not_persisted" in logs.getvalue()
    assert tm.status()["persisted"] is False
    assert await store.load() != tm.tokens  # still the old set on "disk"
    held = tm.tokens
    assert held is not None
    assert token == held.access_token

    skew[0] = sim.config.access_ttl_s  # due again
    await tm.access_token()
    _, second = sim.requests_to("token")
    assert second.body["refresh_token"] == held.refresh_token
    [(_, saved_refresh, saved_at), *_] = store.events
    assert saved_refresh == held.refresh_token
    assert saved_at < second.received_at  # persisted before it was used again
    assert tm.status()["persisted"] is True
    stored = await store.load()
    assert stored is not None
    assert stored.version == 3


async def test_login_store_failure_raises_but_keeps_the_tokens(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """If a login cannot be stored the caller hears of it; the daemon still has the tokens."""
    store = FlakyStore()
    tm = manager(session, sim, store)
    code, state = await follow_authorize(sim_http, await tm.begin_login())
    store.fail_saves = 1
    with pytest.raises(OSError, match="No space"):
        await tm.complete_login(code, state)
    assert not tm.needs_login
    assert tm.status()["persisted"] is False


async def test_invalid_grant_after_a_siblings_rotation_adopts_its_set(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """invalid_grant because another replica just rotated: adopt its set, no needs-login."""
    old = expired_set(sim)
    metrics = Metrics()
    oauth = OAuthClient(session, mtt_config(sim), metrics)
    rotated = TokenSet.from_response(await oauth.refresh(old.refresh_token), version=2)

    class StaleOnce(MemoryTokenStore):
        """Answers the first load with the old set, as if read just before the sibling's save."""

        def __init__(self) -> None:
            super().__init__(rotated)
            self.stale = True

        async def load(self) -> TokenSet | None:
            if self.stale:
                self.stale = False
                return old
            return await super().load()

    tm = TokenManager(oauth, StaleOnce(), MemoryOAuthStates(), metrics)
    tm.state.adopt(old)
    assert await tm.access_token() == rotated.access_token
    assert not tm.needs_login
    assert sample(metrics, "mtt_router_token_refreshes_total", result="invalid_grant") == 1
    assert sample(metrics, "mtt_router_needs_login") == 0


async def test_refresh_token_running_out_means_needs_login_without_asking_mtt(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """Past the refresh token's end the manager needs a login and sends no doomed refresh."""
    now = [time.time()]
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)), clock=lambda: now[0])
    await tm.load()
    tokens = tm.tokens
    assert tokens is not None
    now[0] = tokens.refresh_expires_at + 1
    with json_logs(), pytest.raises(NeedsLoginError, match="refresh token expired"):
        await tm.access_token()
    assert tm.needs_login
    assert sim.requests_to("token") == []
    assert tm.status()["authorized"] is False


async def test_401_after_someone_else_refreshed_does_not_refresh_again(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """A caller whose token was already replaced gets the new one without a refresh."""
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)))
    await tm.load()
    current = await tm.access_token()
    assert await tm.refresh_after_401("an-older-token") == current
    assert sim.requests_to("token") == []


async def test_no_tokens_status_and_refresh_after_401(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """Without tokens: status says so, a 401 refresh is a NeedsLoginError."""
    tm = manager(session, sim, MemoryTokenStore())
    await tm.load()
    assert tm.status() == {"authorized": False, "needs_login": True, "version": None}
    with pytest.raises(NeedsLoginError):
        await tm.refresh_after_401("x")


async def test_non_rotating_refresh_keeps_the_refresh_tokens_lifetime(
    session: aiohttp.ClientSession,
) -> None:
    """A refresh answer without a new refresh token keeps the old one and its original expiry."""

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "fresh-access", "expires_in": "7200"})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        url = f"http://{host}:{port}"
        config = MttConfig("id", "secret", "https://x/mtt", oauth_url=url, api_url=url)
        now = time.time()
        old = TokenSet("stale", "keep-me", now - 1, now + 1000, now - 7200, version=4)
        metrics = Metrics()
        tm = TokenManager(
            OAuthClient(session, config, metrics),
            MemoryTokenStore(old),
            MemoryOAuthStates(),
            metrics,
        )
        await tm.load()
        assert await tm.access_token() == "fresh-access"
        tokens = tm.tokens
        assert tokens is not None
        assert (tokens.refresh_token, tokens.refresh_expires_at, tokens.version) == (
            "keep-me",
            old.refresh_expires_at,
            5,
        )
        assert tokens.access_expires_at == pytest.approx(time.time() + 7200, abs=5)
    finally:
        await runner.cleanup()


async def test_refused_access_and_refresh_tokens_mean_needs_login_at_once(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """MTT refusing both tokens (401, then invalid_grant) is needs-login now, not at expiry."""
    metrics = Metrics()
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)), metrics=metrics)
    await tm.load()
    client = MttClient(session, sim.url, tm, metrics)
    sim.revoke_access_tokens()
    sim.revoke_refresh_tokens()
    with json_logs(), pytest.raises(NeedsLoginError):
        await client.external_numbers()
    assert tm.needs_login
    assert sample(metrics, "mtt_router_needs_login") == 1
    with pytest.raises(NeedsLoginError):
        await tm.access_token()  # the refused token is not handed out again
    assert tm.status()["access_valid"] is False
