"""The CRM lookup source (router/lookup.py) against a CRM over real HTTP: what each answer means,
the time it may take, the cache, the cap on lookups in flight, and what reaches the logs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from structlog.testing import capture_logs

from router.context import NOBODY, CallerContext, Verdict
from router.lookup import (
    LOOKUP,
    MAX_BODY,
    TRANSFER_MARGIN_S,
    LookupSource,
    lookup_once,
    make_lookup_session,
)
from router.metrics import Metrics
from router.routing import MatchKind, decide
from router.rules import Rules, load_rules
from router.sources import DEFAULT_SOURCES, CandidateSource, in_order
from tests.fixtures.crm import NOT_FOUND, CrmStub, Reply, found
from tests.fixtures.net import free_port

SECRET = "s3cret-crm-token"
CALLER = "+7 916 555-44-33"
CALLER_N = "79165554433"
LINE = "74996497803"
NOW = datetime(2027, 1, 11, 7, 0, tzinfo=UTC)


def rules_for(
    url: str, *, timeout_ms: int = 300, cache_s: float = 300, lookup: bool = True
) -> Rules:
    """Version-2 rules asking the CRM at ``url`` (its token from the environment)."""
    section = (
        f'lookup:\n  url: "{url}"\n  headers: {{Authorization: "Bearer ${{CRM_TOKEN}}"}}\n'
        f"  timeout_ms: {timeout_ms}\n  cache_s: {cache_s}\n"
        if lookup
        else ""
    )
    return load_rules(
        f"""\
version: 2
timezone: Europe/Moscow
managers:
  ivanov: {{workplace: "101"}}
  petrova: {{workplace: "102"}}
  sidorov: {{workplace: "201"}}
clients:
  "+7 921 946-27-61": ivanov
prefixes:
  "+7916": petrova
{section}fallback:
  managers: [sidorov]
  otherwise: pbx
"""
    )


@pytest.fixture(autouse=True)
def _crm_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", SECRET)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The lookup's own session, as the daemon makes it."""
    async with make_lookup_session() as s:
        yield s


@pytest.fixture
def metrics() -> Metrics:
    """A fresh registry."""
    return Metrics()


def context(caller: str = CALLER, *, deadline: float | None = None) -> CallerContext:
    """A call from ``caller`` to :data:`LINE`."""
    return CallerContext.of(caller, now=NOW, callee=LINE)._replace(deadline=deadline)


def counted(metrics: Metrics, result: str) -> float:
    """``mtt_router_lookup_total{result}``."""
    value = metrics.registry.get_sample_value("mtt_router_lookup_total", {"result": result})
    return 0.0 if value is None else value


async def test_the_crm_names_the_manager(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """200 {"manager": ...}: that manager; the request carries the normalised, URL-encoded
    numbers and the header from the rules."""
    crm.replies[CALLER_N] = found("ivanov")
    source = LookupSource(session, metrics=metrics)
    url = crm.url + "/m?caller={caller}&line={callee}&x=%2B{caller}"
    verdict = await source.fetch(context(), rules_for(url))
    assert verdict == Verdict("ivanov", (f"caller {CALLER_N} is client of ivanov (lookup)",))
    (request,) = crm.requests
    assert request.query == {"caller": CALLER_N, "line": LINE, "x": f"+{CALLER_N}"}
    assert request.authorization == f"Bearer {SECRET}"
    assert counted(metrics, "found") == 1
    assert metrics.registry.get_sample_value("mtt_router_lookup_seconds_count") == 1


async def test_the_numbers_are_url_encoded(crm: CrmStub, session: aiohttp.ClientSession) -> None:
    """A number kept with characters a query would misread arrives as it was (URL-encoded)."""
    url = crm.url + "/m?caller={caller}&line={callee}"
    source = LookupSource(session)
    odd = CallerContext(
        caller_raw="x", caller="1+2&line=3", callee="4 5", now=NOW
    )  # no real number is like this; the encoding must hold anyway
    await source.fetch(odd, rules_for(url))
    assert crm.requests[0].query == {"caller": "1+2&line=3", "line": "4 5"}


async def test_a_workplace_maps_to_the_manager_there(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """200 {"workplace": ...}: the rules' manager with that workplace."""
    crm.replies[CALLER_N] = Reply(body={"workplace": "102"})
    verdict = await LookupSource(session, metrics=metrics).fetch(
        context(), rules_for(crm.lookup_url)
    )
    assert verdict == Verdict(
        "petrova", (f"caller {CALLER_N} is client of petrova (lookup: workplace 102)",)
    )
    assert counted(metrics, "found") == 1


@pytest.mark.parametrize("reply", [NOT_FOUND, Reply(body={}), Reply(body={"manager": None})])
async def test_404_or_an_empty_answer_is_unknown(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics, reply: Reply
) -> None:
    """404, {} or a null manager: the CRM does not know the caller; the next source decides."""
    crm.replies[CALLER_N] = reply
    verdict = await LookupSource(session, metrics=metrics).fetch(
        context(), rules_for(crm.lookup_url)
    )
    assert verdict == Verdict(None, (f"lookup: CRM does not know caller {CALLER_N}",))
    assert counted(metrics, "unknown") == 1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500, body={"manager": "ivanov"}), "CRM answered 500"),
        (Reply(status=503), "CRM answered 503"),
        (Reply(raw=b"<html>oops</html>"), "CRM answer is not JSON"),
        (Reply(body=["ivanov"]), "CRM answer is not a JSON object"),
        (Reply(body={"manager": ["ivanov"]}), "CRM answer has a manager that is not a string"),
        (Reply(body={"manager": "nobody"}), "CRM names unknown manager 'nobody'"),
        (Reply(body={"workplace": "999"}), "CRM names workplace 999, no manager's in the rules"),
        (Reply(raw=b'{"manager": "ivanov", "pad": "' + b"x" * MAX_BODY + b'"}'), "over"),
        (Reply(raw=b'{"pad": "' + b"x" * MAX_BODY + b'"}', chunked=True), "over 16384 bytes"),
    ],
)
async def test_an_unusable_answer_is_skipped_with_its_reason(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics, reply: Reply, reason: str
) -> None:
    """5xx, non-JSON, a manager or workplace the rules do not know, too large: nobody, and why."""
    crm.replies[CALLER_N] = reply
    verdict = await LookupSource(session, metrics=metrics).fetch(
        context(), rules_for(crm.lookup_url)
    )
    assert verdict.manager is None
    (text,) = verdict.reasons
    assert text.startswith("lookup skipped: ")
    assert reason in text
    assert counted(metrics, "error") == 1


async def test_a_redirect_is_not_followed(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """302 to a URL that would answer: skipped, and the CRM got one request only."""
    target = crm.url + "/m?caller=other"
    crm.replies["other"] = found("ivanov")
    crm.replies[CALLER_N] = Reply(status=302, headers={"Location": target})
    verdict = await LookupSource(session, metrics=metrics).fetch(
        context(), rules_for(crm.lookup_url)
    )
    assert verdict == Verdict(
        None, ("lookup skipped: CRM answered 302 (a redirect, not followed)",)
    )
    assert len(crm.requests) == 1
    assert counted(metrics, "error") == 1


async def test_a_refused_connection_is_skipped(
    session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """Nothing listens at the CRM's address: skipped, the error named by its type only."""
    url = f"http://127.0.0.1:{free_port()}/m?caller={{caller}}"
    verdict = await LookupSource(session, metrics=metrics).fetch(context(), rules_for(url))
    assert verdict.manager is None
    assert verdict.reasons[0].startswith("lookup skipped: no answer from the CRM (Client")
    assert CALLER_N not in verdict.reasons[0]
    assert counted(metrics, "error") == 1


async def test_a_slow_crm_times_out_at_timeout_ms(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """An answer slower than timeout_ms: skipped as a timeout (the answer is not waited for)."""
    crm.replies[CALLER_N] = Reply(body={"manager": "ivanov"}, delay_s=30)
    verdict = await LookupSource(session, metrics=metrics).fetch(
        context(), rules_for(crm.lookup_url, timeout_ms=150)
    )
    assert verdict == Verdict(None, ("lookup skipped: timeout after 150 ms",))
    assert counted(metrics, "timeout") == 1
    assert metrics.registry.get_sample_value("mtt_router_lookup_seconds_count") == 1


async def test_the_decision_budget_shortens_the_timeout(
    crm: CrmStub, session: aiohttp.ClientSession
) -> None:
    """Less budget left than timeout_ms: the lookup gets what is left less the transfer's margin;
    none left: no request at all."""
    crm.replies[CALLER_N] = Reply(body={"manager": "ivanov"}, delay_s=30)
    clock = [100.0]
    source = LookupSource(session, monotonic=lambda: clock[0])
    rules = rules_for(crm.lookup_url, timeout_ms=3000)
    verdict = await source.fetch(context(deadline=100.0 + TRANSFER_MARGIN_S + 0.1), rules)
    assert verdict == Verdict(None, ("lookup skipped: timeout after 100 ms",))
    assert len(crm.requests) == 1
    late = await source.fetch(context(deadline=100.0 + TRANSFER_MARGIN_S), rules)
    assert late == Verdict(None, ("lookup skipped: timeout: no time left in the decision budget",))
    assert len(crm.requests) == 1


async def test_answers_are_cached_for_cache_s(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """Found and not found are cached for cache_s (one request each), counted as cached; a
    failure is not cached; past cache_s the CRM is asked again."""
    crm.replies[CALLER_N] = found("ivanov")
    clock = [0.0]
    source = LookupSource(session, metrics=metrics, monotonic=lambda: clock[0])
    rules = rules_for(crm.lookup_url, cache_s=60)
    assert (await source.fetch(context(), rules)).manager == "ivanov"
    clock[0] = 59.0
    again = await source.fetch(context(), rules)
    assert again == Verdict("ivanov", (f"caller {CALLER_N} is client of ivanov (lookup, cached)",))
    unknown = "+7 916 000-00-01"
    for _ in range(2):
        verdict = await source.fetch(context(unknown), rules)
    assert verdict.reasons == ("lookup: CRM does not know caller 79160000001 (cached)",)
    assert (crm.asked(CALLER_N), crm.asked("79160000001")) == (1, 1)
    assert (counted(metrics, "found"), counted(metrics, "unknown")) == (1, 1)
    assert counted(metrics, "cached") == 2
    clock[0] = 60.0
    await source.fetch(context(), rules)
    assert crm.asked(CALLER_N) == 2
    broken = "+7 916 000-00-02"
    crm.replies["79160000002"] = Reply(status=500)
    for _ in range(2):
        await source.fetch(context(broken), rules)
    assert crm.asked("79160000002") == 2
    assert source.bound().size == 2


async def test_cache_s_zero_caches_nothing(crm: CrmStub, session: aiohttp.ClientSession) -> None:
    """cache_s: 0: every lookup asks the CRM."""
    crm.replies[CALLER_N] = found("ivanov")
    source = LookupSource(session)
    rules = rules_for(crm.lookup_url, cache_s=0)
    for _ in range(2):
        assert (await source.fetch(context(), rules)).manager == "ivanov"
    assert crm.asked(CALLER_N) == 2
    assert source.bound().size == 0


async def test_the_cache_is_bounded_oldest_out(
    crm: CrmStub, session: aiohttp.ClientSession
) -> None:
    """At most cache_max answers: the oldest goes first and is asked again."""
    source = LookupSource(session, cache_max=2)
    rules = rules_for(crm.lookup_url)
    callers = ["+7 916 000-00-01", "+7 916 000-00-02", "+7 916 000-00-03"]
    for caller in callers:
        await source.fetch(context(caller), rules)
    assert source.bound() == (2, 2)
    for caller in reversed(callers):  # 3 and 2 cached; 1 asked again (and 3 evicted for it)
        await source.fetch(context(caller), rules)
    assert [crm.asked(f"7916000000{i}") for i in (1, 2, 3)] == [2, 1, 1]


async def test_a_cached_answer_is_read_with_the_rules_of_the_call(
    crm: CrmStub, session: aiohttp.ClientSession
) -> None:
    """The cache keeps what the CRM said; a manager the rules gain on reload is then used."""
    crm.replies[CALLER_N] = found("kuznetsova")
    source = LookupSource(session)
    rules = rules_for(crm.lookup_url)
    first = await source.fetch(context(), rules)
    assert first.reasons == ("lookup skipped: CRM names unknown manager 'kuznetsova'",)
    reloaded = load_rules(_with_kuznetsova(crm.lookup_url))
    second = await source.fetch(context(), reloaded)
    assert second.manager == "kuznetsova"
    assert crm.asked(CALLER_N) == 1


def _with_kuznetsova(url: str) -> str:
    return (
        "version: 2\ntimezone: Europe/Moscow\nmanagers:\n"
        '  kuznetsova: {workplace: "301"}\n'
        f'lookup: {{url: "{url}"}}\n'
        "fallback: {managers: [], otherwise: pbx}\n"
    )


async def test_lookups_in_flight_are_capped(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """max_inflight lookups waiting for the CRM: one more is skipped at once, without a request;
    the waiting ones still get their answers."""
    crm.default = Reply(body={"manager": "ivanov"}, hold=True)
    source = LookupSource(session, metrics=metrics, max_inflight=2)
    rules = rules_for(crm.lookup_url, timeout_ms=3000, cache_s=0)
    waiting = [
        asyncio.create_task(source.fetch(context(f"+7 916 000-00-0{i}"), rules)) for i in (1, 2)
    ]
    await crm.wait_waiting(2)
    assert source.inflight == 2
    over = await source.fetch(context("+7 916 000-00-03"), rules)
    assert over == Verdict(None, ("lookup skipped: too many lookups in flight (2)",))
    assert crm.asked("79160000003") == 0
    crm.release()
    assert [(await task).manager for task in waiting] == ["ivanov", "ivanov"]
    assert source.inflight == 0
    assert (counted(metrics, "found"), counted(metrics, "error")) == (2, 1)


async def test_failures_log_one_line_a_second_per_kind_without_secrets(
    crm: CrmStub, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """Three 500s and a timeout: one line for the 500s, one for the timeout; counted all the
    same; the header's secret is in no line and no reason."""
    crm.default = Reply(status=500)
    crm.replies["79160000009"] = Reply(delay_s=30)
    source = LookupSource(session, metrics=metrics)
    rules = rules_for(crm.lookup_url, timeout_ms=100, cache_s=0)
    reasons: list[str] = []
    with capture_logs() as logs:
        for caller in ("+7 916 000-00-01", "+7 916 000-00-02", "+7 916 000-00-03"):
            reasons += (await source.fetch(context(caller), rules)).reasons
        reasons += (await source.fetch(context("+7 916 000-00-09"), rules)).reasons
    lines = [line for line in logs if line["event"] == "lookup_failed"]
    assert [(line["kind"], line["held_back"]) for line in lines] == [("status", 0), ("timeout", 0)]
    assert lines[0]["crm"] == crm.url.removeprefix("http://")
    assert (counted(metrics, "error"), counted(metrics, "timeout")) == (3, 1)
    assert SECRET not in json.dumps(logs, default=str) + " ".join(reasons)
    assert SECRET not in repr(rules.lookup)


async def test_no_lookup_in_the_rules_asks_nobody(
    crm: CrmStub, session: aiohttp.ClientSession
) -> None:
    """Rules without `lookup` (version 1 files too): nothing asked, nothing said."""
    source = LookupSource(session)
    rules = rules_for(crm.lookup_url, lookup=False)
    assert await source.fetch(context(), rules) == NOBODY
    assert source.resolve(context(), rules) == NOBODY
    assert crm.requests == []


def chain_with(source: CandidateSource, rules: Rules) -> tuple[CandidateSource, ...]:
    """The rules' order over the default sources and ``source`` as ``lookup``."""
    sources: dict[str, CandidateSource] = {**DEFAULT_SOURCES, LOOKUP: source}
    return in_order(rules, sources)


async def test_decide_with_the_lookup_before_prefixes(
    crm: CrmStub, session: aiohttp.ClientSession
) -> None:
    """In order: clients, lookup, prefixes. The CRM's manager wins over the prefix; a lookup not
    made says so and the prefix decides."""
    crm.replies[CALLER_N] = found("ivanov")
    rules = rules_for(crm.lookup_url)
    source = LookupSource(session)
    chain = chain_with(source, rules)
    fetched = context().with_fetched(LOOKUP, await source.fetch(context(), rules))
    decision = decide(fetched, rules, chain)
    assert (decision.own, decision.matched) == ("ivanov", MatchKind.LOOKUP)
    unfetched = decide(context(), rules, chain)
    assert (unfetched.own, unfetched.matched) == ("petrova", MatchKind.PREFIX)
    assert "lookup not consulted" in unfetched.reasons


async def test_lookup_once_for_rules_explain(crm: CrmStub) -> None:
    """One lookup with the rules' own timeout_ms, no budget, no cache (rules explain --config)."""
    crm.replies[CALLER_N] = Reply(body={"workplace": "101"})
    rules = rules_for(crm.lookup_url)
    async with make_lookup_session() as session:
        for _ in range(2):
            verdict = await lookup_once(context(deadline=0.0), rules, session)
            assert verdict.manager == "ivanov"
    assert crm.asked(CALLER_N) == 2
