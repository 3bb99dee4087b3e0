"""The simulator's OAuth server: code flow, rotation, refusals, bearer checks."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
from yarl import URL

from router.simulator import SimConfig, Simulator, serve_simulator
from router.simulator.tokens import OAuthRefusal, TokenAuthority
from router.simulator.wire import IdMaker
from tests.fixtures.sim import api_call

REDIRECT = "https://oauth.myanycrm.ru/mtt"
SCOPE = "https://mtt.ru/auth.tokens.readwrite"


async def authorize(
    http: aiohttp.ClientSession, sim: Simulator, **overrides: str
) -> aiohttp.ClientResponse:
    query = {
        "response_type": "code",
        "client_id": sim.config.client_id,
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": "xyz",
        **overrides,
    }
    async with http.get(f"{sim.url}/oauth/authorize", params=query, allow_redirects=False) as r:
        await r.read()
        return r


async def token(
    http: aiohttp.ClientSession, sim: Simulator, **form: str
) -> tuple[int, dict[str, Any]]:
    data = {"client_id": sim.config.client_id, "client_secret": sim.config.client_secret, **form}
    async with http.post(f"{sim.url}/oauth/token", data=data) as resp:
        return resp.status, await resp.json()


async def code_flow(http: aiohttp.ClientSession, sim: Simulator) -> dict[str, Any]:
    resp = await authorize(http, sim)
    code = URL(resp.headers["Location"]).query["code"]
    status, body = await token(
        http,
        sim,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        scope=SCOPE,
    )
    assert status == 200
    return body


async def test_authorize_redirects_back_with_code_and_state(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """No login page: 302 straight to redirect_uri with code and the same state."""
    resp = await authorize(sim_http, sim)
    assert resp.status == 302
    location = URL(resp.headers["Location"])
    assert str(location.with_query(None)) == REDIRECT
    assert location.query["state"] == "xyz"
    assert location.query["code"]


async def test_code_grant_answers_the_documents_keys(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """The token answer has exactly the document's five keys; the code is single-use."""
    resp = await authorize(sim_http, sim)
    code = URL(resp.headers["Location"]).query["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    status, body = await token(sim_http, sim, scope=SCOPE, **form)
    assert status == 200
    assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
    assert body["expires_in"] == 7200
    assert body["token_type"] == "Bearer"
    # The document's authorization_code example really shows this other scope.
    assert body["scope"] == "https://mtt.ru/auth/openapi.readwrite"
    status, body = await token(sim_http, sim, **form)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert sim.tokens.grants["authorization_code"] == 1


async def test_refresh_rotates_and_old_refresh_token_is_refused(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """Each refresh issues a new refresh token; the previous one gets invalid_grant."""
    first = await code_flow(sim_http, sim)
    status, second = await token(
        sim_http, sim, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert status == 200
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == SCOPE
    status, body = await token(
        sim_http, sim, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await token(
        sim_http, sim, grant_type="refresh_token", refresh_token=second["refresh_token"]
    )
    assert status == 200
    assert sim.stats()["grants"] == {"authorization_code": 1, "refresh_token": 2, "direct": 0}


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, 400, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "nope"}, 400, "invalid_grant"),
    ],
)
async def test_token_endpoint_refusals(
    sim: Simulator,
    sim_http: aiohttp.ClientSession,
    form: dict[str, str],
    status: int,
    error: str,
) -> None:
    """Wrong client -> 401 invalid_client; wrong grant -> 400 invalid_grant."""
    got_status, body = await token(sim_http, sim, **{"grant_type": "refresh_token", **form})
    assert (got_status, body["error"]) == (status, error)


async def test_code_must_come_back_with_the_same_redirect_uri(
    sim: Simulator, sim_http: aiohttp.ClientSession
) -> None:
    """A code redeemed with another redirect_uri is invalid_grant (and used up)."""
    resp = await authorize(sim_http, sim)
    code = URL(resp.headers["Location"]).query["code"]
    status, body = await token(
        sim_http, sim, grant_type="authorization_code", code=code, redirect_uri="https://evil.test"
    )
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"client_id": "unknown"}, "invalid_client"),
        ({"redirect_uri": "not a url"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
    ],
)
async def test_authorize_refuses_without_redirecting(
    sim: Simulator, sim_http: aiohttp.ClientSession, overrides: dict[str, str], error: str
) -> None:
    """A bad client_id or redirect_uri gets a 400 page, never a redirect."""
    resp = await authorize(sim_http, sim, **overrides)
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert sim.tokens.refusals[error] == 1


async def test_registered_redirect_uri_is_enforced(sim_http: aiohttp.ClientSession) -> None:
    """With a registered redirect_uri, another one is refused; expires_in follows the config."""
    config = SimConfig(redirect_uri=REDIRECT, access_ttl_s=90.5)
    async with serve_simulator(config) as sim:
        resp = await authorize(sim_http, sim, redirect_uri="https://elsewhere.example/cb")
        assert resp.status == 400
        body = await code_flow(sim_http, sim)
        assert body["expires_in"] == 91


async def test_bearer_checks(sim: Simulator, sim_http: aiohttp.ClientSession) -> None:
    """Missing, unknown, malformed and expired tokens get 401; a live one gets through."""
    tokens = await code_flow(sim_http, sim)
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", None))[0] == 401
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", "bogus"))[0] == 401
    live = tokens["access_token"]
    assert (await api_call(sim_http, sim, "GET", "externalNumbersInfo", live))[0] == 200
    headers = {"Authorization": f"Basic {live}"}
    async with sim_http.get(f"{sim.url}/externalNumbersInfo", headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert sim.expire_access_tokens() == 1
    status, body = await api_call(sim_http, sim, "GET", "externalNumbersInfo", live)
    assert (status, body["error"]["message"]) == (401, "access token expired")
    # A refresh after expiry works and its token is accepted.
    status, fresh = await token(
        sim_http, sim, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert status == 200
    assert (await api_call(sim_http, sim, "GET", "workPlacesInfo", fresh["access_token"]))[0] == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_expire_on_their_lifetimes() -> None:
    """Access tokens die after access_ttl_s, refresh tokens after refresh_ttl_s, codes too."""
    clock = FakeClock()
    config = SimConfig(access_ttl_s=2, refresh_ttl_s=5, code_ttl_s=1)
    authority = TokenAuthority(config, IdMaker(random.Random(0)), clock)
    answer = authority.issue_direct()
    header = f"Bearer {answer['access_token']}"
    assert authority.check(header) is None
    clock.now += 2
    assert authority.check(header) == "access token expired"
    clock.now += 3
    refresh = {
        "client_id": config.client_id,
        "client_secret": config.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": answer["refresh_token"],
    }
    with pytest.raises(OAuthRefusal, match="invalid_grant"):
        authority.grant(refresh)
    code = authority.authorize(
        {"client_id": config.client_id, "redirect_uri": REDIRECT, "response_type": "code"}
    )
    clock.now += 1
    with pytest.raises(OAuthRefusal, match="invalid_grant"):
        authority.grant({**refresh, "grant_type": "authorization_code", "code": code})
