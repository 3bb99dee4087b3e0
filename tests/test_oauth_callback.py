"""The one OAuth callback handler (daemon and `auth login`): every case of its table, with fakes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from router.errors import (
    InvalidGrantError,
    InvalidStateError,
    RouterError,
    ServerError,
    StorageError,
)
from router.oauth_callback import LoginOutcome, OAuthCallback, add_callback_routes

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@dataclass
class Fakes:
    """A state store holding ``good``, a ``complete_login`` that fails with ``error`` if set."""

    states: set[str] = field(default_factory=lambda: {"good"})
    error: RouterError | None = None
    logins: list[tuple[str, str]] = field(default_factory=list)
    outcomes: list[LoginOutcome] = field(default_factory=list)

    async def redeem(self, state: str) -> bool:
        if state not in self.states:
            return False
        self.states.remove(state)
        return True

    async def complete_login(self, code: str, state: str) -> str:
        if not await self.redeem(state):
            raise InvalidStateError("OAuth state is unknown, expired or already used")
        if self.error is not None:
            raise self.error
        self.logins.append((code, state))
        return "tokens"


@pytest.fixture
def fakes() -> Fakes:
    """Fresh fakes; the only valid state is ``good``."""
    return Fakes()


async def serve(fakes: Fakes, client: ClientFactory, path: str = "/mtt") -> TestClient[Any, Any]:
    """The handler on ``path`` (and ``path/``) of a test server."""
    callback = OAuthCallback(
        redeem_state=fakes.redeem,
        complete_login=fakes.complete_login,
        on_outcome=fakes.outcomes.append,
        retry_hint="Try again from /oauth/start.",
    )
    app = web.Application()
    add_callback_routes(app.router, path, callback.handle)
    return await client(app)


async def get(http: TestClient[Any, Any], url: str) -> tuple[int, str]:
    """Status and page of one GET."""
    async with http.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("url", ["/mtt", "/mtt/"])
async def test_bare_get_is_200_naming_the_service(
    fakes: Fakes, aiohttp_client: ClientFactory, url: str
) -> None:
    """No query at all (MTT checking the redirect URI): 200 naming mtt-router, on both paths."""
    http = await serve(fakes, aiohttp_client)
    status, page = await get(http, url)
    assert (status, "OAuth callback of mtt-router" in page) == (200, True)
    assert (fakes.logins, fakes.outcomes) == ([], [])


async def test_root_path_is_served_once(fakes: Fakes, aiohttp_client: ClientFactory) -> None:
    """A redirect URI at ``/`` is served there (no ``//`` route)."""
    http = await serve(fakes, aiohttp_client, "/")
    assert (await get(http, "/"))[0] == 200


async def test_success_stores_and_tells_the_hook(
    fakes: Fakes, aiohttp_client: ClientFactory
) -> None:
    """Code and our state: the login completes, 200, the hook hears ``authorised``."""
    http = await serve(fakes, aiohttp_client)
    status, page = await get(http, "/mtt?code=c1&state=good")
    assert (status, "Authorised" in page) == (200, True)
    assert fakes.logins == [("c1", "good")]
    assert fakes.outcomes == [LoginOutcome("authorised")]


async def test_error_redeems_our_state_and_reports_refused(
    fakes: Fakes, aiohttp_client: ClientFactory
) -> None:
    """``?error=`` with our state: 400 with MTT's words, state spent, one warning, hook told."""
    http = await serve(fakes, aiohttp_client)
    with capture_logs() as logs:
        status, page = await get(
            http, "/mtt?error=access_denied&error_description=User+said+no&state=good"
        )
    assert (status, "MTT said: User said no" in page) == (400, True)
    assert fakes.states == set()
    assert fakes.outcomes == [LoginOutcome("refused", "User said no")]
    assert [(e["log_level"], e["event"]) for e in logs] == [("warning", "oauth_denied")]
    # The good redirect arriving later with the same state is refused: nothing exchanged.
    assert (await get(http, "/mtt?code=c1&state=good"))[0] == 400
    assert fakes.logins == []


@pytest.mark.parametrize("query", ["error=access_denied", "error=access_denied&state=forged"])
async def test_error_with_a_state_not_ours_tells_the_hook_nothing(
    fakes: Fakes, aiohttp_client: ClientFactory, query: str
) -> None:
    """``?error=`` without a state we issued: the same 400 page, but no outcome (not our login)."""
    http = await serve(fakes, aiohttp_client)
    status, page = await get(http, f"/mtt?{query}")
    assert (status, "MTT said: access_denied" in page) == (400, True)
    assert (fakes.outcomes, fakes.states) == ([], {"good"})


@pytest.mark.parametrize("query", ["code=c1", "state=good", "code=&state=good", "other=1"])
async def test_missing_code_or_state_is_400(
    fakes: Fakes, aiohttp_client: ClientFactory, query: str
) -> None:
    """A query without both code and state: 400, the state untouched, no outcome."""
    http = await serve(fakes, aiohttp_client)
    assert (await get(http, f"/mtt?{query}"))[0] == 400
    assert (fakes.outcomes, fakes.states) == ([], {"good"})


async def test_unknown_state_is_400_and_no_outcome(
    fakes: Fakes, aiohttp_client: ClientFactory
) -> None:
    """A state we never issued (or used already): 400 saying so; nothing stored, hook not told."""
    http = await serve(fakes, aiohttp_client)
    status, page = await get(http, "/mtt?code=c1&state=forged")
    assert (status, "unknown, expired or already used" in page) == (400, True)
    assert (fakes.logins, fakes.outcomes) == ([], [])


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidGrantError("the code was refused"), 400),
        (ServerError("MTT answered 503"), 502),
        (StorageError("Redis did not answer"), 502),
    ],
    ids=["auth-error", "upstream-error", "storage-error"],
)
async def test_failed_exchange_reports_failed(
    fakes: Fakes, aiohttp_client: ClientFactory, error: RouterError, status: int
) -> None:
    """MTT refusing the code: 400; MTT or storage failing: 502 with the retry hint; hook told."""
    fakes.error = error
    http = await serve(fakes, aiohttp_client)
    answer, page = await get(http, "/mtt?code=c1&state=good")
    assert (answer, f"{error}. Try again from /oauth/start." in page) == (status, True)
    assert fakes.outcomes == [LoginOutcome("failed", str(error))]
