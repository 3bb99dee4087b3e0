"""OAuthClient against the simulator: URL and form shapes, answers, every kind of refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from router.config import SCOPE
from router.errors import (
    AuthError,
    ClientRequestError,
    InvalidGrantError,
    ServerError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from router.metrics import Metrics
from router.mtt._http import error_message
from router.mtt.client import make_session
from router.mtt.oauth import OAuthClient
from router.simulator import EndpointFault, Simulator
from tests.mtt_support import REDIRECT_URI, follow_authorize, mtt_config, sample


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The production session factory, closed after the test."""
    session = make_session()
    yield session
    await session.close()


@pytest.fixture
def metrics() -> Metrics:
    """Fresh metrics on their own registry."""
    return Metrics()


@pytest.fixture
def oauth(session: aiohttp.ClientSession, sim: Simulator, metrics: Metrics) -> OAuthClient:
    """An OAuth client pointed at the simulator."""
    return OAuthClient(session, mtt_config(sim), metrics)


def test_authorize_url_carries_the_documented_parameters(
    oauth: OAuthClient, sim: Simulator
) -> None:
    """The authorize URL has response_type, client_id, redirect_uri, scope and our state."""
    url = urlsplit(oauth.authorize_url("st4te"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{sim.url}/oauth/authorize"
    assert parse_qs(url.query) == {
        "response_type": ["code"],
        "client_id": [sim.config.client_id],
        "redirect_uri": [REDIRECT_URI],
        "scope": [SCOPE],
        "state": ["st4te"],
    }


async def test_exchange_code_posts_the_documented_form(
    oauth: OAuthClient, sim: Simulator, sim_http: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """The code exchange sends the document's form fields and returns the five answer keys."""
    code, state = await follow_authorize(sim_http, oauth.authorize_url("s1"))
    assert state == "s1"
    answer = await oauth.exchange_code(code)
    assert set(answer) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
    assert answer["expires_in"] == 7200
    [record] = sim.requests_to("token")
    assert record.method == "POST"
    assert record.body == {
        "grant_type": "authorization_code",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPE,
    }
    assert sample(metrics, "mtt_router_api_requests_total", method="oauthToken", code="200") == 1


async def test_refresh_posts_the_documented_form_and_rotates(
    oauth: OAuthClient, sim: Simulator
) -> None:
    """A refresh sends grant_type=refresh_token; the old refresh token is then refused."""
    first = sim.issue_tokens()
    answer = await oauth.refresh(first["refresh_token"])
    assert answer["refresh_token"] != first["refresh_token"]
    [record] = sim.requests_to("token")
    assert record.body == {
        "grant_type": "refresh_token",
        "client_id": sim.config.client_id,
        "client_secret": sim.config.client_secret,
        "refresh_token": first["refresh_token"],
    }
    with pytest.raises(InvalidGrantError) as info:
        await oauth.refresh(first["refresh_token"])
    assert info.value.status == 400
    assert first["refresh_token"] not in str(info.value)


async def test_reused_code_is_invalid_grant(
    oauth: OAuthClient, sim_http: aiohttp.ClientSession
) -> None:
    """An authorization code works once."""
    code, _ = await follow_authorize(sim_http, oauth.authorize_url("s"))
    await oauth.exchange_code(code)
    with pytest.raises(InvalidGrantError):
        await oauth.exchange_code(code)


async def test_wrong_client_secret_is_auth_error(
    session: aiohttp.ClientSession, sim: Simulator, metrics: Metrics
) -> None:
    """401 invalid_client from the token endpoint is an AuthError that hides the secret."""
    config = mtt_config(sim)
    wrong = type(config)(
        client_id=config.client_id,
        client_secret="not-the-secret",
        redirect_uri=config.redirect_uri,
        oauth_url=config.oauth_url,
        api_url=config.api_url,
    )
    oauth = OAuthClient(session, wrong, metrics)
    with pytest.raises(AuthError) as info:
        await oauth.refresh(sim.issue_tokens()["refresh_token"])
    assert not isinstance(info.value, InvalidGrantError)
    assert info.value.status == 401
    assert "not-the-secret" not in str(info.value)
    assert "not-the-secret" not in repr(oauth)


async def test_token_endpoint_5xx_is_server_error(oauth: OAuthClient, sim: Simulator) -> None:
    """A 503 from the token endpoint is a retryable ServerError."""
    sim.faults.token_endpoint_down(503)
    with pytest.raises(ServerError) as info:
        await oauth.refresh(sim.issue_tokens()["refresh_token"])
    assert (info.value.status, info.value.retryable) == (503, True)


async def test_token_endpoint_400_other_error_is_client_error(
    oauth: OAuthClient, sim: Simulator
) -> None:
    """A 400 that is not invalid_grant keeps MTT's message in a ClientRequestError."""
    sim.faults.set("token", EndpointFault(status=400))
    with pytest.raises(ClientRequestError) as info:
        await oauth.refresh("whatever")
    assert info.value.mtt_message == "simulated"


async def test_dropped_connection_is_connection_error(
    oauth: OAuthClient, sim: Simulator, metrics: Metrics
) -> None:
    """A connection closed without an answer is an UpstreamConnectionError."""
    sim.faults.token_endpoint_down("drop")
    with pytest.raises(UpstreamConnectionError):
        await oauth.refresh("whatever")
    assert sample(metrics, "mtt_router_api_requests_total", method="oauthToken", code="connection")


async def test_token_timeout_is_exact(oauth: OAuthClient, sim: Simulator) -> None:
    """timeout_s is honoured to the millisecond, not rounded up to whole seconds."""
    sim.faults.set("token", EndpointFault(latency_ms=3000))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await oauth.refresh("whatever", timeout_s=0.3)
    assert loop.time() - started < 0.3 + 0.25


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"code": 400, "message": "bad params"}}', "bad params"),
        (b'{"error": "invalid_grant", "error_description": "expired"}', "expired"),
        (b'{"error": "invalid_grant"}', "invalid_grant"),
        (b'{"result": {"success": 0, "message": "no such call"}}', "no such call"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", ""),
    ],
)
def test_error_message_reads_every_shape(body: bytes, expected: str) -> None:
    """MTT's own words are found in API, OAuth, result-style and non-JSON error bodies."""
    assert error_message(body) == expected
