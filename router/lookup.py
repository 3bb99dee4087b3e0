"""The CRM lookup (rules ``lookup``): whose client a caller is, asked while the call is parked.

A :class:`~router.sources.FetchingSource` named ``lookup``: the engine runs it only when the
sources before it in the rules' ``order`` named nobody. One ``GET`` of ``lookup.url`` with
``{caller}`` and ``{callee}`` (normalised, URL-encoded) and ``lookup.headers``; the CRM answers
``200 {"manager": "ivanov"}`` or ``200 {"workplace": "883140777716581"}`` (the rules' manager at
that workplace), ``404`` or ``{}`` when it does not know the caller. Anything else (another
status, a redirect, which is never followed, a body that is not a JSON object or is larger than
:data:`MAX_BODY`, a manager or workplace the rules do not know, no answer in time) is skipped with
its reason in the decision's chain: the next source decides.

Bounds: each lookup gets the smaller of ``lookup.timeout_ms`` and what is left of the decision
budget less :data:`TRANSFER_MARGIN_S` (kept for the ``transferCall`` that follows); at most
:data:`MAX_INFLIGHT` lookups at once (over it: skipped); answers (found and not found, not
failures) are cached ``lookup.cache_s`` by URL, at most :data:`CACHE_MAX` of them, the oldest out
first. ``lookup.*`` is read per call: a rules reload applies to the next one. Header values are
never logged; log lines name the CRM by host only (the query holds the caller's number).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote, urlsplit

import aiohttp
import structlog

from router.bounds import Bound
from router.context import NOBODY, CallerContext, MatchKind, Read, Verdict
from router.log_limit import LineLimiter
from router.metrics import Metrics
from router.rules.model import Lookup, Rules

log = structlog.get_logger("router.lookup")

LOOKUP = "lookup"
"""The source's name in the rules' ``order`` and in :attr:`CallerContext.fetched`."""
MAX_INFLIGHT = 32
"""Lookups in flight at once; another one is skipped (``too many lookups in flight``)."""
CACHE_MAX = 10_000
"""Cached answers at most; the oldest goes first."""
MAX_BODY = 16 * 1024
"""The largest answer read (bytes, decoded); a larger one is unusable."""
TRANSFER_MARGIN_S = 0.2
"""Kept out of a lookup's time: the ``transferCall`` after it must fit in the decision budget."""
MIN_TIMEOUT_S = 0.02
"""Less time than this left: no request at all."""

NOT_CONSULTED = Verdict(None, ("lookup not consulted",))


class Answer(NamedTuple):
    """What the CRM said: a manager id, a workplace, or neither (it does not know the caller)."""

    manager: str | None = None
    workplace: str | None = None


UNKNOWN = Answer()


class Unusable(Exception):
    """A lookup that gave nothing usable: ``kind`` (one log line a second each), the reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def result(self) -> str:
        """Its ``mtt_router_lookup_total`` label."""
        return "timeout" if self.kind in ("timeout", "no_time") else "error"


def lookup_url(lookup: Lookup, caller: str, callee: str | None) -> str:
    """``lookup.url`` with ``{caller}`` and ``{callee}`` URL-encoded (a missing callee: empty)."""
    return lookup.url.replace("{caller}", quote(caller, safe="")).replace(
        "{callee}", quote(callee or "", safe="")
    )


def crm_host(lookup: Lookup) -> str:
    """The CRM as log lines name it: host and port, never the query or any user info."""
    parts = urlsplit(lookup.url.replace("{", "").replace("}", ""))
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def parse_answer(status: int, body: bytes) -> Answer:
    """The CRM's answer, or :class:`Unusable` saying why not."""
    if status == 404:
        return UNKNOWN
    if 300 <= status < 400:
        raise Unusable("redirect", f"CRM answered {status} (a redirect, not followed)")
    if status != 200:
        raise Unusable("status", f"CRM answered {status}")
    try:
        data = json.loads(body)
    except ValueError:
        raise Unusable("not_json", "CRM answer is not JSON") from None
    if not isinstance(data, dict):
        raise Unusable("bad_answer", "CRM answer is not a JSON object")
    manager, workplace = _text(data, "manager"), _text(data, "workplace")
    return Answer(manager, None if manager is not None else workplace)


def _text(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unusable("bad_answer", f"CRM answer has a {key} that is not a string")
    return str(value)


def verdict_of(answer: Answer, caller: str, rules: Rules, *, cached: bool = False) -> Verdict:
    """What ``answer`` means with ``rules``: the manager it names, or :class:`Unusable`."""
    how = ", cached" if cached else ""
    if answer.manager is not None:
        if answer.manager not in rules.managers:
            raise Unusable("unknown_manager", f"CRM names unknown manager {answer.manager!r}")
        return Verdict(
            answer.manager, (f"caller {caller} is client of {answer.manager} (lookup{how})",)
        )
    if answer.workplace is not None:
        wp = answer.workplace
        manager = next((m.id for m in rules.managers.values() if m.workplace == wp), None)
        if manager is None:
            raise Unusable(
                "unknown_workplace", f"CRM names workplace {wp}, no manager's in the rules"
            )
        return Verdict(
            manager, (f"caller {caller} is client of {manager} (lookup: workplace {wp}{how})",)
        )
    return Verdict(
        None, (f"lookup: CRM does not know caller {caller}{' (cached)' if cached else ''}",)
    )


def make_lookup_session(max_inflight: int = MAX_INFLIGHT) -> aiohttp.ClientSession:
    """The CRM's own pooled session (call inside a running loop; the caller closes it): at most
    ``max_inflight`` connections, no cookies, no session-wide timeout (each lookup brings its
    own, never rounded up to a second), no proxy from the environment (as for MTT)."""
    connector = aiohttp.TCPConnector(
        limit=max_inflight,
        limit_per_host=max_inflight,
        ttl_dns_cache=60,
        timeout_ceil_threshold=3600,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, ceil_threshold=3600),
        headers={"User-Agent": "mtt-router", "Accept": "application/json"},
        raise_for_status=False,
        trust_env=False,
    )


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class _Cache:
    """Answers by URL, each kept ``ttl`` seconds (read per call), at most ``size``, oldest out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[str, tuple[float, Answer]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float, ttl: float) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] < ttl:
            return entry[1]
        del self._entries[key]
        return None

    def put(self, key: str, answer: Answer, now: float, ttl: float) -> None:
        if ttl <= 0 or self.size <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (now, answer)
        # Insertion order is age order: drop the expired and whatever is over the limit.
        while entries:
            oldest = next(iter(entries.values()))[0]
            if len(entries) <= self.size and now - oldest < ttl:
                break
            entries.popitem(last=False)


class LookupSource:
    """The ``lookup`` candidate source (a :class:`~router.sources.FetchingSource`).

    ``session`` is the CRM's pooled session (:func:`make_lookup_session`, owned by the caller);
    without one the CRM is never asked and the source says "lookup not consulted".
    ``monotonic`` is the clock of :attr:`CallerContext.deadline` (the engine's).
    """

    name = LOOKUP
    kind = MatchKind.LOOKUP

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        metrics: Metrics | None = None,
        monotonic: Callable[[], float] = _loop_time,
        max_inflight: int = MAX_INFLIGHT,
        cache_max: int = CACHE_MAX,
    ) -> None:
        self._session = session
        self._monotonic = monotonic
        self._max_inflight = max_inflight
        self._inflight = 0
        self._cache = _Cache(cache_max)
        self._lines: dict[str, LineLimiter] = collections.defaultdict(LineLimiter)
        self._seconds = metrics.lookup_seconds if metrics is not None else None
        self._results = (
            {
                r: metrics.lookups.labels(r)
                for r in ("found", "unknown", "timeout", "error", "cached")
            }
            if metrics is not None
            else None
        )

    @property
    def inflight(self) -> int:
        """Lookups waiting for the CRM now."""
        return self._inflight

    def bound(self) -> Bound:
        """How full the answer cache is (``/status`` "bounds": ``lookup_cache``)."""
        return Bound(len(self._cache), self._cache.size)

    def reads(self, caller: str) -> tuple[Read, ...]:
        """None: the CRM is asked by :meth:`fetch`."""
        return ()

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """The fetched verdict; nothing without ``lookup`` in the rules."""
        fetched = context.fetched.get(LOOKUP)
        if fetched is not None:
            return fetched
        return NOBODY if rules.lookup is None else NOT_CONSULTED

    async def fetch(self, context: CallerContext, rules: Rules) -> Verdict:
        """Ask the CRM about ``context.caller`` (or its cached answer); never raises."""
        lookup, caller = rules.lookup, context.caller
        if lookup is None or caller is None:
            return NOBODY
        if self._session is None:
            return NOT_CONSULTED
        now = self._monotonic()
        url = lookup_url(lookup, caller, context.callee)
        cached = self._cache.get(url, now, lookup.cache_s)
        try:
            if cached is not None:
                result = "cached"
                verdict = verdict_of(cached, caller, rules, cached=True)
            else:
                answer = await self._ask(lookup, url, self._timeout_s(lookup, context, now))
                self._cache.put(url, answer, self._monotonic(), lookup.cache_s)
                verdict = verdict_of(answer, caller, rules)
                result = "found" if verdict.manager is not None else "unknown"
        except Unusable as exc:
            # A cache hit that the rules cannot use is still a cache hit (no request went out).
            self._count("cached" if cached is not None else exc.result)
            self._report(exc, lookup, caller)
            return Verdict(None, (f"lookup skipped: {exc.reason}",))
        self._count(result)
        return verdict

    def _timeout_s(self, lookup: Lookup, context: CallerContext, now: float) -> float:
        timeout = lookup.timeout_ms / 1000.0
        if context.deadline is not None:
            timeout = min(timeout, context.deadline - now - TRANSFER_MARGIN_S)
        if timeout < MIN_TIMEOUT_S:
            raise Unusable("no_time", "timeout: no time left in the decision budget")
        return timeout

    async def _ask(self, lookup: Lookup, url: str, timeout_s: float) -> Answer:
        """One GET, bounded by ``timeout_s`` from request to the last byte of the answer."""
        if self._inflight >= self._max_inflight:
            raise Unusable("busy", f"too many lookups in flight ({self._max_inflight})")
        assert self._session is not None
        self._inflight += 1
        started = self._monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                return await _get(self._session, url, lookup)
        except TimeoutError:
            raise Unusable("timeout", f"timeout after {round(timeout_s * 1000)} ms") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # The exception's type only: its text may carry the URL (and so the caller's number).
            raise Unusable("connection", f"no answer from the CRM ({type(exc).__name__})") from None
        finally:
            self._inflight -= 1
            if self._seconds is not None:
                self._seconds.observe(self._monotonic() - started)

    def _count(self, result: str) -> None:
        if self._results is not None:
            self._results[result].inc()

    def _report(self, exc: Unusable, lookup: Lookup, caller: str) -> None:
        held = self._lines[exc.kind].allow(self._monotonic())
        if held is not None:
            log.warning(
                "lookup_failed",
                kind=exc.kind,
                error=exc.reason,
                crm=crm_host(lookup),
                caller=caller,
                held_back=held,
            )


async def _get(session: aiohttp.ClientSession, url: str, lookup: Lookup) -> Answer:
    async with session.get(
        url,
        headers=dict(lookup.headers),
        allow_redirects=False,
    ) as resp:
        if resp.status != 200:
            return parse_answer(resp.status, b"")
        if resp.content_length is not None and resp.content_length > MAX_BODY:
            raise Unusable("too_large", f"CRM answer over {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(4096):
            body += chunk
            if len(body) > MAX_BODY:
                raise Unusable("too_large", f"CRM answer over {MAX_BODY} bytes")
        return parse_answer(200, bytes(body))


async def lookup_once(
    context: CallerContext, rules: Rules, session: aiohttp.ClientSession
) -> Verdict:
    """One lookup for ``context`` with ``rules.lookup`` (its own ``timeout_ms``, no cache, no
    metrics): what ``rules explain --config`` shows. Join it with
    ``context.with_fetched(LOOKUP, verdict)`` and decide with a :class:`LookupSource` among the
    sources; never raises."""
    return await LookupSource(session, cache_max=0).fetch(context._replace(deadline=None), rules)
