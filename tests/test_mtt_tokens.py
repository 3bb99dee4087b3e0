"""TokenManager against the simulator: login, proactive and single-flight refresh, rotation,
persistence, needs-login, and no token in any log line; the refresher's wake-up on a change."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.errors import AuthError, InvalidStateError, NeedsLoginError, ServerError
from router.metrics import Metrics
from router.mtt.client import MttClient, make_session
from router.mtt.refresher import Refresher
from router.mtt.token_state import TokenState
from router.mtt.tokens import TokenSet
from router.simulator import EndpointFault, SimConfig, Simulator, serve_simulator
from router.state.memory import FileTokenStore, MemoryOAuthStates, MemoryTokenStore
from tests.mtt_support import (
    expired_set,
    follow_authorize,
    issued_set,
    json_logs,
    manager,
    sample,
)
from tests.polling import eventually


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The production session factory, closed after the test."""
    session = make_session()
    yield session
    await session.close()


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refreshes(sim: Simulator) -> int:
    """Refresh grants the simulator has answered."""
    return sim.tokens.grants["refresh_token"]


async def test_full_login_flow_through_the_callback(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """begin_login, MTT's redirect, complete_login: usable tokens stored, needs-login left."""
    metrics = Metrics()
    store = FileTokenStore(tmp_path / "tokens.json")
    tm = manager(session, sim, store, metrics=metrics)
    await tm.start()
    try:
        assert tm.status()["needs_login"] is True
        assert sample(metrics, "mtt_router_needs_login") == 1
        code, state = await follow_authorize(sim_http, await tm.begin_login())
        tokens = await tm.complete_login(code, state)
        assert not tm.needs_login
        assert sample(metrics, "mtt_router_needs_login") == 0
        assert (await store.load()) == tokens
        assert await tm.access_token() == tokens.access_token
        assert sample(metrics, "mtt_router_token_expiry_timestamp_seconds", token="access") == (
            tokens.access_expires_at
        )
        status = tm.status()
        assert status["authorized"] is True
        assert tokens.access_token not in json.dumps(status)
    finally:
        await tm.close()


async def test_state_is_single_use(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """A reused state is refused and nothing is exchanged or stored."""
    store = MemoryTokenStore()
    tm = manager(session, sim, store)
    code, state = await follow_authorize(sim_http, await tm.begin_login())
    await tm.complete_login(code, state)
    saved = store.saves
    code2, _ = await follow_authorize(sim_http, await tm.begin_login())
    with pytest.raises(InvalidStateError):
        await tm.complete_login(code2, state)
    assert store.saves == saved
    assert sim.tokens.grants["authorization_code"] == 1


async def test_unknown_and_expired_states_are_refused(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """A state we never issued, or one older than 10 minutes, stores nothing."""
    now = [1000.0]
    store = MemoryTokenStore()
    tm = manager(session, sim, store, states=MemoryOAuthStates(clock=lambda: now[0]))
    code, state = await follow_authorize(sim_http, await tm.begin_login())
    with pytest.raises(InvalidStateError):
        await tm.complete_login(code, "forged")
    now[0] += 601
    with pytest.raises(InvalidStateError):
        await tm.complete_login(code, state)
    assert store.saves == 0
    assert sim.requests_to("token") == []


async def test_proactive_refresh_before_expiry(session: aiohttp.ClientSession) -> None:
    """The refresher renews the access token at 80% of its life, before any caller needs it."""
    # 5 s: a 1 s window between "due" and "expired", wide enough for a loaded machine.
    async with serve_simulator(SimConfig(access_ttl_s=5.0, seed=1)) as sim:
        initial = issued_set(sim)
        store = MemoryTokenStore(initial)
        tm = manager(session, sim, store)
        await tm.start()
        try:
            await eventually(lambda: tm.version == 2, "the refreshed set (version 2)", timeout_s=8)
            [refresh] = sim.requests_to("token")
            # Due at 4.0 s (80%), expiring at 5.0 s.
            assert 4.0 <= refresh.received_at_wall - initial.obtained_at < 5.0
            assert await tm.access_token() != initial.access_token
            stored = await store.load()
            assert stored is not None
            assert stored.version == 2
        finally:
            await tm.close()


async def test_refresh_token_is_kept_alive(session: aiohttp.ClientSession) -> None:
    """A refresh token near its end is renewed even while the access token is fresh."""
    async with serve_simulator(SimConfig(refresh_ttl_s=2.0, seed=1)) as sim:
        answer = sim.issue_tokens()
        answer["refresh_expires_in"] = 2  # what our TokenSet would know of a 2 s refresh token
        store = MemoryTokenStore(TokenSet.from_response(answer, version=1))
        tm = manager(session, sim, store)
        await tm.start()
        try:
            await eventually(lambda: refreshes(sim) >= 1, "a refresh", timeout_s=3)
            assert tm.tokens is not None
            assert tm.tokens.refresh_valid()
        finally:
            await tm.close()


async def test_hundred_concurrent_calls_with_expired_token_refresh_once(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """100 concurrent API calls finding the token expired cause exactly one refresh."""
    metrics = Metrics()
    store = MemoryTokenStore(expired_set(sim))
    tm = manager(session, sim, store, metrics=metrics)
    await tm.load()
    client = MttClient(session, sim.url, tm, metrics)
    results = await asyncio.gather(*(client.external_numbers() for _ in range(100)))
    assert all(len(r) == 2 for r in results)
    assert refreshes(sim) == 1
    assert len(sim.requests_to("token")) == 1
    assert sample(metrics, "mtt_router_token_refreshes_total", result="ok") == 1
    assert store.saves == 1


async def test_401_refreshes_once_and_retries(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """A 401 (token revoked by MTT) triggers one refresh and one retry that succeeds."""
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)))
    await tm.load()
    client = MttClient(session, sim.url, tm, Metrics())
    sim.revoke_access_tokens()
    assert len(await client.workplaces()) == 4
    assert refreshes(sim) == 1
    assert [r.status for r in sim.requests_to("workPlacesInfo")] == [401, 200]


async def test_second_401_does_not_loop(session: aiohttp.ClientSession, sim: Simulator) -> None:
    """When MTT refuses even the fresh token, the call fails with AuthError after one retry."""
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)))
    await tm.load()
    client = MttClient(session, sim.url, tm, Metrics())
    sim.faults.storm_401 = 5
    with pytest.raises(AuthError) as info:
        await client.terminals()
    assert info.value.status == 401
    assert len(sim.requests_to("terminalsInfo")) == 2
    assert refreshes(sim) == 1


async def test_a_401_storm_refreshes_at_most_once_per_interval(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """MTT refusing every token, fresh ones too: calls fail with AuthError, and the storm costs
    one refresh per interval, not one per call (no refresh loop); after it, 401s refresh again."""
    clock = FakeMonotonic()
    metrics = Metrics()
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)), metrics=metrics, monotonic=clock)
    await tm.load()
    client = MttClient(session, sim.url, tm, metrics)
    sim.faults.storm_401 = 1000
    with json_logs() as logs:
        for _ in range(20):
            with pytest.raises(AuthError):
                await client.terminals()
    assert refreshes(sim) == 1
    # The first call: 401, refresh, 401 again; the other 19: one 401 each, no retry.
    assert len(sim.requests_to("terminalsInfo")) == 2 + 19
    assert sample(metrics, "mtt_router_token_refreshes_total", result="throttled") == 19
    refused = [line for line in logs.getvalue().splitlines() if "token_refused_fresh" in line]
    assert len(refused) == 1  # one line a second, however many 401s
    clock.now += 5.0
    with pytest.raises(AuthError):
        await client.terminals()
    assert refreshes(sim) == 2


async def test_concurrent_401s_share_one_refresh(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """Many callers refused with the same token cause one refresh; all retry with the new one."""
    tm = manager(session, sim, MemoryTokenStore(issued_set(sim)))
    await tm.load()
    client = MttClient(session, sim.url, tm, Metrics())
    sim.revoke_access_tokens()
    await asyncio.gather(*(client.external_numbers() for _ in range(20)))
    assert refreshes(sim) == 1


async def test_rotated_refresh_token_is_persisted_before_use(
    session: aiohttp.ClientSession, sim: Simulator, tmp_path: Path
) -> None:
    """Each refresh stores the rotated token first; the next refresh uses the stored one."""
    path = tmp_path / "tokens.json"
    saved_at: dict[str, float] = {}

    class Recording(FileTokenStore):
        async def save(self, tokens: TokenSet, *, expected_version: int | None) -> bool:
            ok = await super().save(tokens, expected_version=expected_version)
            saved_at[tokens.refresh_token] = time.monotonic()
            return ok

    store = Recording(path)
    await store.save(expired_set(sim), expected_version=None)
    skew = [0.0]
    tm = manager(session, sim, store, clock=lambda: time.time() + skew[0])
    await tm.load()
    await tm.access_token()
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 2
    skew[0] = sim.config.access_ttl_s  # two hours later: the access token is due again
    await tm.access_token()
    first, second = sim.requests_to("token")
    assert second.body["refresh_token"] == on_disk["refresh_token"] != first.body["refresh_token"]
    assert saved_at[on_disk["refresh_token"]] < second.received_at
    assert json.loads(path.read_text())["version"] == 3


async def test_restart_needs_no_login(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A new TokenManager on the same tokens file is authorised at once."""
    path = tmp_path / "tokens.json"
    tm = manager(session, sim, FileTokenStore(path))
    code, state = await follow_authorize(sim_http, await tm.begin_login())
    tokens = await tm.complete_login(code, state)
    await tm.close()

    again = manager(session, sim, FileTokenStore(path))
    await again.start()
    try:
        assert not again.needs_login
        assert await again.access_token() == tokens.access_token
        client = MttClient(session, sim.url, again, Metrics())
        assert len(await client.external_numbers()) == 2
    finally:
        await again.close()
    assert refreshes(sim) == 0


async def test_sibling_refresh_is_adopted_not_repeated(
    session: aiohttp.ClientSession, sim: Simulator, tmp_path: Path
) -> None:
    """Two managers on one tokens file (daemon and CLI): the second adopts the first's refresh."""
    path = tmp_path / "tokens.json"
    await FileTokenStore(path).save(expired_set(sim), expected_version=None)
    metrics_b = Metrics()
    a = manager(session, sim, FileTokenStore(path))
    b = manager(session, sim, FileTokenStore(path), metrics=metrics_b)
    await a.load()
    await b.load()
    token_a = await a.access_token()
    assert await b.access_token() == token_a
    assert refreshes(sim) == 1
    assert sample(metrics_b, "mtt_router_token_refreshes_total", result="skipped") == 1


async def test_revoked_refresh_token_enters_needs_login(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """invalid_grant: NeedsLoginError, gauge 1, a log line saying where to log in (no live
    authorize URL: no state is created for it), no retry loop."""
    loads = [0]

    class Counting(MemoryTokenStore):
        async def load(self) -> TokenSet | None:
            loads[0] += 1
            return await super().load()

    metrics = Metrics()
    states = CountingStates()
    tm = manager(
        session, sim, Counting(expired_set(sim)), metrics=metrics, states=states, poll_s=0.02
    )
    sim.revoke_refresh_tokens()
    with json_logs() as logs:
        await tm.start()
        try:
            with pytest.raises(NeedsLoginError):
                await tm.access_token()
            with pytest.raises(NeedsLoginError):
                await tm.access_token()  # fails fast, without asking MTT again
            polled = loads[0]
            await eventually(  # the refresher keeps polling
                lambda: loads[0] >= polled + 5, "5 more store loads", timeout_s=5.0
            )
            assert tm._refresher is not None
            assert tm._refresher.running
        finally:
            await tm.close()
    assert tm.needs_login
    assert sample(metrics, "mtt_router_needs_login") == 1
    assert sample(metrics, "mtt_router_token_refreshes_total", result="invalid_grant") == 1
    assert len(sim.requests_to("token")) == 1
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    announced = [line for line in lines if line["event"] == "needs_login"]
    assert len(announced) == 1
    assert_no_live_login(announced[0], sim)
    assert states.puts == 0


class CountingStates(MemoryOAuthStates):
    """Memory OAuth states counting the states created."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put(self, state: str, ttl_s: float) -> None:
        self.puts += 1
        await super().put(state, ttl_s)


def assert_no_live_login(line: dict[str, Any], sim: Simulator) -> None:
    """A needs-login line names where to start a login, and holds no authorize URL or state."""
    assert "authorize_url" not in line
    text = json.dumps(line)
    assert "state=" not in text
    assert sim.url not in text
    assert "://" not in text
    assert "/oauth/start" in line["login"]
    assert "mtt-router auth login" in line["login"]


async def test_needs_login_log_has_no_live_state_and_a_login_started_on_demand_works(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """Started without tokens: the needs-login line says where to log in and creates no state
    (an authorize URL in a log is a live login for whoever reads it); a login begun on demand
    (what GET /oauth/start and `auth login` do) goes through the callback."""
    states = CountingStates()
    tm = manager(session, sim, MemoryTokenStore(), states=states)
    with json_logs() as logs:
        await tm.start()
        await tm.close()
    [line] = [json.loads(x) for x in logs.getvalue().splitlines() if '"needs_login"' in x]
    assert_no_live_login(line, sim)
    assert states.puts == 0
    code, state = await follow_authorize(sim_http, await tm.begin_login())
    assert states.puts == 1
    await tm.complete_login(code, state)
    assert not tm.needs_login


async def test_needs_login_left_when_another_process_logs_in(
    session: aiohttp.ClientSession, sim: Simulator, tmp_path: Path
) -> None:
    """In needs-login the refresher polls the store and adopts a set stored by `auth login`."""
    path = tmp_path / "tokens.json"
    tm = manager(session, sim, FileTokenStore(path), poll_s=0.02)
    await tm.start()
    try:
        assert tm.needs_login
        await FileTokenStore(path).save(issued_set(sim, version=5), expected_version=None)
        await eventually(lambda: not tm.needs_login, "the stored set adopted", timeout_s=5.0)
        assert tm.version == 5
    finally:
        await tm.close()


async def test_transient_refresh_errors_back_off_and_recover(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """A token endpoint outage is retried in the background; calls fail typed, not crash."""
    metrics = Metrics()
    tm = manager(session, sim, MemoryTokenStore(expired_set(sim)), metrics=metrics)
    sim.faults.set("token", EndpointFault(status=503, count=1))
    await tm.start()
    try:
        await eventually(  # after a ~1 s back-off
            lambda: refreshes(sim) == 1, "a refresh after the 503", timeout_s=4
        )
        assert sample(metrics, "mtt_router_token_refreshes_total", result="error") == 1
        assert not tm.needs_login
    finally:
        await tm.close()
    sim.faults.set("token", EndpointFault(status=503))
    tm2 = manager(session, sim, MemoryTokenStore(expired_set(sim)))
    await tm2.load()
    with pytest.raises(ServerError):
        await tm2.access_token()
    assert not tm2.needs_login


async def test_no_token_or_secret_in_logs_or_reprs(
    session: aiohttp.ClientSession, sim: Simulator, sim_http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Login, refresh, 401 and needs-login log no token and no client secret."""
    store = FileTokenStore(tmp_path / "tokens.json")
    # Three 401 refreshes in a row: no interval between them here.
    tm = manager(session, sim, store, poll_s=0.02, min_refresh_interval_s=0)
    client = MttClient(session, sim.url, tm, Metrics())
    with json_logs() as logs:
        await tm.start()
        code, state = await follow_authorize(sim_http, await tm.begin_login())
        await tm.complete_login(code, state)
        sim.revoke_access_tokens()
        await client.external_numbers()
        sim.faults.storm_401 = 2
        with pytest.raises(AuthError):
            await client.terminals()
        sim.revoke_access_tokens()
        sim.revoke_refresh_tokens()
        with pytest.raises(NeedsLoginError):
            await client.workplaces()
        await tm.close()
    secrets = {sim.config.client_secret}
    for record in sim.requests_to("token"):
        secrets.update(v for k, v in record.body.items() if k in ("code", "refresh_token"))
    secrets.update(t for t in sim.tokens.access)
    secrets.update(t for t in sim.tokens.refresh)
    stored = await store.load()
    assert stored is not None
    secrets.update((stored.access_token, stored.refresh_token))
    text = logs.getvalue()
    assert "token_refreshed" in text
    assert "needs_login" in text
    reprs = repr(tm) + repr(tm.state) + repr(tm.grants) + repr(stored) + repr(client)
    reprs += repr(store) + str(tm.status())
    for secret in secrets:
        assert secret not in text
        assert secret not in reprs


async def test_close_lets_an_in_flight_refresh_finish(
    session: aiohttp.ClientSession, sim: Simulator
) -> None:
    """close() waits for a running refresh so a rotated token is stored, not lost."""
    store = MemoryTokenStore(expired_set(sim))
    tm = manager(session, sim, store)
    await tm.load()
    sim.faults.set("token", EndpointFault(latency_ms=200))
    caller = asyncio.create_task(tm.access_token())
    await eventually(
        lambda: len(sim.requests_to("token")) == 1, "the refresh request at MTT", timeout_s=5.0
    )
    caller.cancel()  # the caller gives up (its deadline passed) ...
    await tm.close()  # ... but the refresh completes and is saved
    stored = await store.load()
    assert stored is not None
    assert stored.version == 2


async def test_change_waiter_sees_only_changes_after_it_was_taken() -> None:
    """A waiter taken before a change sees it even if awaited later; one taken after does not."""
    state = TokenState(MemoryTokenStore(), Metrics())
    before = state.changed()
    now = time.time()
    state.adopt(TokenSet("access", "refresh", now + 100, now + 1000, now, version=1))
    after = state.changed()
    assert await before.wait(0.01)
    assert not await after.wait(0.01)


async def test_refresher_wakes_on_a_state_change_not_at_its_next_poll() -> None:
    """Waiting out a long poll without tokens, the loop refreshes as soon as a due set arrives."""
    state = TokenState(MemoryTokenStore(), Metrics())
    asked = asyncio.Event()

    class Source:
        async def refresh(self) -> TokenSet:
            asked.set()
            raise NeedsLoginError("enough for this test")

        async def reload(self) -> None:
            return None

    refresher = Refresher(state, Source(), poll_s=60.0)
    refresher.start()
    try:
        await asyncio.sleep(0.01)  # the loop is now waiting out its 60 s poll
        assert not asked.is_set()
        now = time.time()
        state.adopt(TokenSet("access", "refresh", now + 10, now + 1000, now - 100, version=1))
        async with asyncio.timeout(2):
            await asked.wait()
    finally:
        await refresher.close()
