"""The MTT API client: every method of the document, typed results, deadlines to the millisecond.

* One long-lived :class:`aiohttp.ClientSession` (see :func:`make_session`) is passed in: one
  keep-alive pool for the process.
* Every call has a deadline (absolute ``loop.time()`` for the hot path, ``timeout_s`` otherwise),
  enforced with :func:`asyncio.timeout_at` (exact; aiohttp's ``ClientTimeout`` rounds 5 s and more
  up to a whole second). Retries and token refreshes happen inside that same deadline.
* Retries: reads and ``setParkingNumbers`` (idempotent) on 5xx and connection errors; writes only
  when the connection could not even be opened (MTT cannot have applied them). A 401 refreshes the
  token once and retries once; a second 401 is an :class:`AuthError` (and a 401 storm costs one
  refresh per few seconds: :mod:`router.mtt.token_grants`). A 429 (not applied) is retried after
  its ``Retry-After`` when that still fits before the deadline, else it is the 4xx it is: a
  command is never retried past the decision budget.
* Errors are typed (:mod:`router.errors`): timeout, connection, auth, client 4xx with MTT's
  message (also for a 200 carrying ``"success": 0`` or an ``error`` object), server 5xx.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from yarl import URL

from router.errors import (
    AuthError,
    ClientRequestError,
    ServerError,
    TokenUnavailableError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from router.events import CallRef
from router.log_limit import LineLimiter
from router.metrics import Metrics
from router.mtt._http import answer_result, connection_error, retry_after_s
from router.mtt.auth import TokenManager
from router.mtt.models import (
    ExternalNumber,
    Parsed,
    Terminal,
    Workplace,
    parse_call_id,
    parse_numbers,
    parse_terminals,
    parse_workplaces,
)

T = TypeVar("T")

EXTERNAL_NUMBERS = "externalNumbersInfo"
WORKPLACES = "workPlacesInfo"
WORKPLACES_ALT = "workplacesInfo"
"""The document's curl example spells it this way; tried once if ``workPlacesInfo`` is a 404."""
TERMINALS = "terminalsInfo"
MAKE_CALL = "makeCall"
TERMINATE_CALL = "terminateCall"
TRANSFER_CALL = "transferCall"
SET_PARKING = "setParkingNumbers"
METHODS = (
    EXTERNAL_NUMBERS,
    WORKPLACES,
    TERMINALS,
    MAKE_CALL,
    TERMINATE_CALL,
    TRANSFER_CALL,
    SET_PARKING,
)

MAX_ATTEMPTS = 3
RETRY_BASE_S = 0.05
RETRY_MAX_S = 1.0
MIN_ATTEMPT_S = 0.05
"""A retry is not started with less than this left before the deadline: it could not finish."""
TOO_MANY_REQUESTS = 429

_JSON = "application/json"


def make_session(
    *,
    limit: int = 100,
    keepalive_timeout_s: float = 30.0,
    dns_ttl_s: int = 300,
    user_agent: str = "mtt-router",
) -> aiohttp.ClientSession:
    """The process's one session to MTT (call inside a running loop; close it in a cleanup_ctx).

    No session-wide timeout: each call brings its own deadline. ``ceil_threshold`` is raised so
    that a timeout someone does set on a request is not rounded up to a whole second either.
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=limit,
        keepalive_timeout=keepalive_timeout_s,
        ttl_dns_cache=dns_ttl_s,
        timeout_ceil_threshold=3600,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, ceil_threshold=3600),
        headers={"User-Agent": user_agent, "Accept": _JSON},
        raise_for_status=False,
    )


def _body(params: dict[str, Any]) -> bytes:
    return orjson.dumps({"params": params})


class MttClient:
    """Typed access to every MTT API method over one shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        tokens: TokenManager,
        metrics: Metrics,
        *,
        default_timeout_s: float = 5.0,
    ) -> None:
        self._session = session
        self._base = api_url.rstrip("/")
        self._tokens = tokens
        self._metrics = metrics
        self._default_timeout_s = default_timeout_s
        self._urls = {name: URL(f"{self._base}/{name}") for name in (*METHODS, WORKPLACES_ALT)}
        self._workplaces_path = WORKPLACES
        # Resolved once: the hot path should not look labels up on every request.
        self._seconds = {m: metrics.api_request_seconds.labels(m) for m in METHODS}
        self._counts: dict[tuple[str, str], Any] = {}
        # Rebuilt only when the token changes (every ~2 h), not per request.
        self._headers: dict[bool, dict[str, str]] = {}
        self._headers_token = ""
        self._throttled_lines = LineLimiter()

    def __repr__(self) -> str:
        return f"MttClient(api_url={self._base!r})"

    # -- reads ------------------------------------------------------------------------------

    async def external_numbers(self, *, timeout_s: float | None = None) -> list[ExternalNumber]:
        """The account's external numbers (``GET /externalNumbersInfo``)."""
        return (await self.read_numbers(timeout_s=timeout_s)).items

    async def read_numbers(self, *, timeout_s: float | None = None) -> Parsed[ExternalNumber]:
        """:meth:`external_numbers`, saying whether the answer was read in full (``unread``)."""
        result = await self._call(EXTERNAL_NUMBERS, "GET", None, self._deadline(timeout_s), True)
        return self._checked(EXTERNAL_NUMBERS, parse_numbers(result))

    async def workplaces(self, *, timeout_s: float | None = None) -> list[Workplace]:
        """The PBX's workplaces with their SIP IDs (``GET /workPlacesInfo``)."""
        deadline = self._deadline(timeout_s)
        try:
            result = await self._call(WORKPLACES, "GET", None, deadline, True)
        except ClientRequestError as exc:
            if exc.status != 404 or self._workplaces_path == WORKPLACES_ALT:
                raise
            structlog.get_logger("router.mtt").info(
                "mtt_path_fallback", method=WORKPLACES, path=WORKPLACES_ALT
            )
            self._workplaces_path = WORKPLACES_ALT
            result = await self._call(WORKPLACES, "GET", None, deadline, True)
        return self._items(WORKPLACES, parse_workplaces(result))

    async def terminals(self, *, timeout_s: float | None = None) -> list[Terminal]:
        """Terminals and the workplaces they belong to (``GET /terminalsInfo``)."""
        result = await self._call(TERMINALS, "GET", None, self._deadline(timeout_s), True)
        return self._items(TERMINALS, parse_terminals(result))

    # -- writes -----------------------------------------------------------------------------

    async def make_call(
        self, caller_id: str, callee_id: str, *, timeout_s: float | None = None
    ) -> str:
        """Ring workplace ``caller_id``, then connect it to ``callee_id``; returns the call id."""
        body = _body({"callerId": caller_id, "calleeId": callee_id})
        result = await self._call(MAKE_CALL, "POST", body, self._deadline(timeout_s), False)
        call_id = parse_call_id(result)
        if call_id is None:
            raise ServerError(f"{MAKE_CALL}: answer has no call id", method=MAKE_CALL, status=200)
        return call_id

    async def terminate_call(
        self, call: CallRef, transport_id: str | None, *, deadline: float
    ) -> None:
        """End the parked leg so the PBX routes the call its usual way at once."""
        params: dict[str, Any] = {"call": call.wire()}
        if transport_id is not None:
            params["transportId"] = transport_id
        await self._call(TERMINATE_CALL, "POST", _body(params), deadline, False)

    async def transfer_call(
        self, call: CallRef, callee_id: str, transport_id: str | None, *, deadline: float
    ) -> None:
        """Send the call to workplace ``callee_id`` (a SIP ID)."""
        params: dict[str, Any] = {"call": call.wire(), "calleeId": callee_id}
        if transport_id is not None:
            params["transportId"] = transport_id
        await self._call(TRANSFER_CALL, "POST", _body(params), deadline, False)

    async def set_parking(
        self, numbers: Sequence[str], is_parking: bool, *, timeout_s: float | None = None
    ) -> None:
        """Put external ``numbers`` on parking (or take them off)."""
        body = _body({"numbers": list(numbers), "isParking": is_parking})
        # Setting a state is idempotent: a retry after a 5xx cannot do harm.
        await self._call(SET_PARKING, "POST", body, self._deadline(timeout_s), True)

    # -- machinery --------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        timeout = self._default_timeout_s if timeout_s is None else timeout_s
        return asyncio.get_running_loop().time() + timeout

    def _items(self, method: str, parsed: Parsed[T]) -> list[T]:
        return self._checked(method, parsed).items

    def _checked(self, method: str, parsed: Parsed[T]) -> Parsed[T]:
        """``parsed``, after a warning and a count when it is not the whole list."""
        if parsed.unread:
            structlog.get_logger("router.mtt").warning(
                "mtt_answer_unread",
                method=method,
                read=len(parsed.items),
                skipped=parsed.skipped,
                unread=list(parsed.unread),
            )
            self._metrics.api_answers_unread.labels(method).inc()
        return parsed

    async def _call(
        self, method: str, verb: str, body: bytes | None, deadline: float, idempotent: bool
    ) -> Any:
        """Send with retries inside ``deadline``; return the answer's ``result`` (or the body)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        reauthorised = False
        while True:
            attempt += 1
            if loop.time() >= deadline:
                # Nothing is sent once the deadline has passed (a pooled connection would
                # otherwise write the request before the first suspension point).
                raise UpstreamTimeoutError(
                    f"{method}: deadline passed before sending", method=method
                )
            token = self._tokens.cached_access_token()
            if token is None:
                token = await _within(self._tokens.access_token(), deadline, method)
            try:
                status, raw, retry_after = await self._send(method, verb, body, token, deadline)
            except UpstreamConnectionError as exc:
                if (idempotent or exc.retryable) and await _backoff(loop, attempt, deadline):
                    continue
                raise
            if status == 401:
                if reauthorised:
                    raise AuthError(
                        f"{method}: MTT refused a freshly refreshed token (401)",
                        method=method,
                        status=401,
                    )
                reauthorised = True
                await _within(self._tokens.refresh_after_401(token), deadline, method)
                continue
            if status >= 500 and idempotent and await _backoff(loop, attempt, deadline):
                continue
            if status == TOO_MANY_REQUESTS and await self._wait_retry_after(
                method, retry_after, attempt, deadline
            ):
                continue
            return answer_result(method, status, raw)

    async def _wait_retry_after(
        self, method: str, retry_after: str | None, attempt: int, deadline: float
    ) -> bool:
        """After a 429: sleep as MTT asks and return True, or False when the wait (or the next
        attempt after it) would not fit before ``deadline``."""
        loop = asyncio.get_running_loop()
        delay = retry_after_s(retry_after, time.time())
        if delay is None:
            delay = min(RETRY_BASE_S * 2 ** (attempt - 1), RETRY_MAX_S)
        fits = attempt < MAX_ATTEMPTS and loop.time() + delay + MIN_ATTEMPT_S < deadline
        if (held := self._throttled_lines.allow(loop.time())) is not None:
            structlog.get_logger("router.mtt").warning(
                "mtt_throttled",
                method=method,
                retry_after=retry_after,
                retrying=fits,
                held_back=held,
            )
        if not fits:
            return False
        await asyncio.sleep(delay)
        return True

    async def _send(
        self, method: str, verb: str, body: bytes | None, token: str, deadline: float
    ) -> tuple[int, bytes, str | None]:
        """One request: ``(status, body, Retry-After of a 429)``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = "timeout"
        if token != self._headers_token:
            auth = "Bearer " + token
            self._headers = {
                False: {"Authorization": auth},
                True: {"Authorization": auth, "Content-Type": _JSON},
            }
            self._headers_token = token
        headers = self._headers[body is not None]
        url = self._urls[self._workplaces_path if method == WORKPLACES else method]
        try:
            async with (
                asyncio.timeout_at(deadline),
                # Never follow a redirect: a 307 would resend the command and the bearer token
                # to wherever it points. A 3xx is an answer like any other (not applied).
                self._session.request(
                    verb, url, data=body, headers=headers, allow_redirects=False
                ) as resp,
            ):
                raw = await resp.read()
                code = str(resp.status)
                status = resp.status
                retry_after = (
                    resp.headers.get("Retry-After") if status == TOO_MANY_REQUESTS else None
                )
                return status, raw, retry_after
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"{method}: no answer before the deadline", method=method
            ) from None
        except aiohttp.ClientError as exc:
            code = "connection"
            raise connection_error(exc, method) from exc
        finally:
            counter = self._counts.get((method, code))
            if counter is None:
                counter = self._counts[method, code] = self._metrics.api_requests.labels(
                    method, code
                )
            counter.inc()
            self._seconds[method].observe(loop.time() - started)


async def _within(awaitable: Awaitable[str], deadline: float, method: str) -> str:
    """Wait for a token no longer than the call's deadline (the refresh itself carries on).

    A refused credential is the :class:`AuthError` it is (needs login, or a throttled refresh);
    any other failure to get a token means nothing was sent: :class:`TokenUnavailableError`,
    never the token endpoint's 5xx or timeout, which would read as "MTT may have applied it".
    """
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable
    except AuthError:
        raise
    except UpstreamError as exc:
        raise TokenUnavailableError(
            f"{method}: not sent, no token ({type(exc).__name__}: {exc})", method=method
        ) from exc
    except TimeoutError:
        raise TokenUnavailableError(
            f"{method}: not sent, the deadline passed while waiting for a token", method=method
        ) from None


async def _backoff(loop: asyncio.AbstractEventLoop, attempt: int, deadline: float) -> bool:
    """Sleep before retry ``attempt + 1``; False when no retry is left or it would not fit."""
    if attempt >= MAX_ATTEMPTS:
        return False
    delay = min(RETRY_BASE_S * 2 ** (attempt - 1), RETRY_MAX_S)
    if loop.time() + delay + MIN_ATTEMPT_S >= deadline:
        return False
    await asyncio.sleep(delay)
    return True
