"""What the checks of ``mtt-router doctor`` share: the :class:`Check` value, the context they run
in (:func:`open_doctor`), one probe of MTT's API and small wording helpers.

The checks themselves are in :mod:`router.doctor`. Nothing here prints, and nothing here puts a
token, the client secret or the path of ``redirect_uri`` (it may carry a secret segment) into text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

from router.config import Config
from router.metrics import Metrics
from router.mtt.auth import TokenManager
from router.mtt.client import EXTERNAL_NUMBERS, MttClient, make_session
from router.mtt.oauth import OAuthClient
from router.rules.loader import load_rules, load_rules_file
from router.rules.model import Rules
from router.state.factory import Stores, open_stores

Status = Literal["ok", "warn", "fail"]

REQUEST_TIMEOUT_S = 5.0
"""One HTTP request of a check: the public URL, an API probe, an API method."""


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, what was found, what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        """The JSON form ``doctor --json`` prints."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    """A passed check."""
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    """Not fatal, but worth a look (or not checked because another check failed)."""
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str = "") -> Check:
    """The deployment will not work as it is."""
    return Check(name, "fail", detail, fix)


@dataclass(frozen=True)
class DoctorContext:
    """What the checks share: the config, one HTTP session, the stores, tokens, the API client."""

    config: Config
    config_path: str
    session: aiohttp.ClientSession
    stores: Stores
    tokens: TokenManager
    client: MttClient
    clock: Callable[[], float] = time.time
    """Wall clock (Unix seconds) compared with MTT's ``Date``; tests inject a skewed one."""

    @property
    def login_hint(self) -> str:
        """The command that authorises the integration again."""
        return f"run `mtt-router auth login --config {self.config_path}`"


@contextlib.asynccontextmanager
async def open_doctor(
    config: Config, config_path: str, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[DoctorContext]:
    """Session, stores, token manager and API client, closed on exit.

    Tokens are not loaded here (the tokens check does it): a storage that does not answer is then
    one failed line of the report, not an aborted command.
    """
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        # make_session keeps aiohttp's default TLS context: the system's trust store, as MTT's
        # own check of redirect_uri would verify it.
        session = make_session()
        stack.push_async_callback(session.close)
        stores = await open_stores(config, metrics)  # Redis down does not raise: ping says so
        stack.push_async_callback(stores.aclose)
        tokens = TokenManager(
            OAuthClient(session, config.mtt, metrics), stores.tokens, stores.states, metrics
        )
        stack.push_async_callback(tokens.close)
        client = MttClient(session, config.mtt.api_url, tokens, metrics)
        yield DoctorContext(config, config_path, session, stores, tokens, client, clock)


@dataclass(frozen=True)
class Probe:
    """One ``GET externalNumbersInfo``: MTT's status, its clock against ours, the time taken."""

    status: int
    skew_s: float | None
    """MTT's ``Date`` minus our clock at the middle of the request; ``None`` without a Date."""
    elapsed_ms: float


async def probe_api(ctx: DoctorContext, token: str | None) -> Probe:
    """One request to the API, with ``token`` if given (raises ``aiohttp.ClientError`` or
    ``TimeoutError``). Any answer carries MTT's ``Date``, a 401 too."""
    url = f"{ctx.config.mtt.api_url}/{EXTERNAL_NUMBERS}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    sent_at, started = ctx.clock(), time.monotonic()
    async with asyncio.timeout(REQUEST_TIMEOUT_S), ctx.session.get(url, headers=headers) as resp:
        await resp.read()
        received_at, elapsed_s = ctx.clock(), time.monotonic() - started
        status, date = resp.status, resp.headers.get("Date")
    skew_s = None
    if date:
        with contextlib.suppress(TypeError, ValueError):
            # Date has whole seconds, cut down: +0.5 s centres it; compare with the midpoint.
            mtt_at = parsedate_to_datetime(date).timestamp() + 0.5
            skew_s = mtt_at - (sent_at + received_at) / 2
    return Probe(status, skew_s, elapsed_s * 1000)


async def configured_rules(ctx: DoctorContext) -> tuple[str, Rules] | None:
    """``(where, rules)`` as the daemon would load them; ``None`` when nothing was pushed.

    Raises :class:`RulesError` for rules that do not load, :class:`StorageError` without Redis.
    """
    config = ctx.config
    if config.rules.source == "file":
        return await asyncio.to_thread(_rules_file, config.rules.path)
    shared = ctx.stores.shared_rules
    pulled = None if shared is None else await shared.pull()
    if pulled is None:
        return None
    where = f"Redis rules version {pulled.version}"
    return where, load_rules(pulled.text, where, clients_text=pulled.clients)


def _rules_file(path: str) -> tuple[str, Rules]:
    return os.path.abspath(path), load_rules_file(path)


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, without its path (which may carry a secret segment)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
