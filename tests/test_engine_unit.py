"""The engine on fakes: every outcome and every failure path, no sockets and no sleeping.

A fake commander scripts MTT's answer to each command (and how much fake time it takes); a fake
clock stands in for the event loop's clock and the wall clock. The ambiguous-answer rule: only a
4xx or a refused connection means "not applied, try the next candidate"; a 5xx, a timeout or a
broken connection after sending may have been applied, so no further command follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pytest
from structlog.testing import capture_logs

from router.answers import AnswerTracker
from router.context import CallerContext, MatchKind, Read, Verdict
from router.dispatch import DecisionRecord, Outcome
from router.engine import Engine
from router.errors import (
    ClientRequestError,
    NeedsLoginError,
    ServerError,
    StorageError,
    TokenUnavailableError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from router.events import CallEvent, CallRef, CallState, CallType, Party, VpbxEvent, VpbxEventType
from router.metrics import Metrics
from router.rollout import Rollout
from router.rules import Rules, load_rules
from router.rules.source import LoadedRules
from router.sources import (
    CLIENTS_SPACE,
    DEFAULT_SOURCES,
    LEARNED_SPACE,
    CandidateSource,
    ClientsSource,
    PrefixSource,
)
from router.state.memory import MemoryCallStore, MemoryPresence
from router.state.protocols import CallStore, Gathered

RULES = """\
version: 1
timezone: Europe/Moscow
managers:
  ivanov:  {workplace: "101"}
  petrova: {workplace: "102"}
  sidorov: {workplace: "103"}
clients:
  "+7 921 946-27-61": ivanov
prefixes:
  "+7812": petrova
fallback:
  managers: [sidorov]
  otherwise: pbx
"""
NUMBER = "74996497803"
CLIENT = "+79219462761"
UNKNOWN = "+74950000000"
BUDGET_MS = 3500
WORKDAY = datetime(2027, 1, 12, 8, 0, tzinfo=UTC)

Command = Literal["transfer", "terminate"]


class FakeClock:
    """The loop's clock as a number the test (and the fake commander) moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        """Fake loop time."""
        return self.t

    def now(self) -> datetime:
        """A working Tuesday."""
        return WORKDAY


@dataclass
class Step:
    """MTT's answer to one command: after ``takes_s`` of fake time, OK or ``raises``."""

    takes_s: float = 0.01
    raises: Exception | None = None


@dataclass
class FakeCommander:
    """Answers commands from a script (default: OK) and records them."""

    clock: FakeClock
    script: list[Step] = field(default_factory=list)
    sent: list[tuple[Command, str | None, float]] = field(default_factory=list)
    hold: asyncio.Event | None = None
    """When set, every command waits for it (a command that never returns)."""

    async def _answer(self, command: Command, workplace: str | None, deadline: float) -> None:
        self.sent.append((command, workplace, deadline))
        if self.hold is not None:
            await self.hold.wait()
        step = self.script.pop(0) if self.script else Step()
        self.clock.t += step.takes_s
        if step.raises is not None:
            raise step.raises

    async def transfer_call(
        self, call: CallRef, callee_id: str, transport_id: str | None, *, deadline: float
    ) -> None:
        """transferCall."""
        await self._answer("transfer", callee_id, deadline)

    async def terminate_call(
        self, call: CallRef, transport_id: str | None, *, deadline: float
    ) -> None:
        """terminateCall."""
        await self._answer("terminate", None, deadline)


@dataclass
class FakeRules:
    """A rules view."""

    current: LoadedRules | None


@dataclass
class FakeDirectory:
    """A directory view that records refresh requests."""

    numbers: frozenset[str] | None = frozenset({NUMBER})
    workplace_ids: frozenset[str] | None = frozenset({"101", "102", "103"})
    refreshes: list[str] = field(default_factory=list)

    def request_refresh(self, what: Literal["numbers", "workplaces", "all"] = "all") -> None:
        """Record the request."""
        self.refreshes.append(what)


@dataclass
class Harness:
    """An engine on fakes, and what it reported."""

    engine: Engine
    clock: FakeClock
    commander: FakeCommander
    directory: FakeDirectory
    presence: MemoryPresence
    metrics: Metrics
    records: list[DecisionRecord]

    async def call(self, caller: str | None = CLIENT, call_id: str = "c1") -> DecisionRecord:
        """Deliver a parked ``trying`` and return its decision."""
        self.engine.handle(trying(caller, call_id), self.clock.t)
        await self.engine.settle()
        return self.records[-1]

    def commands(self) -> list[tuple[Command, str | None]]:
        """What MTT got, in order."""
        return [(command, workplace) for command, workplace, _ in self.commander.sent]

    def count(self, outcome: Outcome) -> float:
        """``decisions_total{outcome}``."""
        value = self.metrics.registry.get_sample_value(
            "mtt_router_decisions_total", {"outcome": outcome.value}
        )
        return value or 0.0

    def observed(self) -> float:
        """``decision_seconds`` observations."""
        return self.metrics.registry.get_sample_value("mtt_router_decision_seconds_count") or 0.0


def trying(caller: str | None, call_id: str = "c1") -> CallEvent:
    """A parked call to our number."""
    return CallEvent(
        call=CallRef(call_id, "tag-1"),
        state=CallState.TRYING,
        type=CallType.INCOMING,
        caller=Party(id=caller),
        callee=Party(id=NUMBER),
        transport_id="t-1",
    )


def make(
    *steps: Step,
    rules: Rules | None = None,
    loaded: bool = True,
    calls: CallStore | None = None,
    sources: Mapping[str, CandidateSource] = DEFAULT_SOURCES,
    rollout: Rollout | None = None,
    max_inflight: int | None = None,
) -> Harness:
    """A harness whose commander answers ``steps`` in order (then OK)."""
    clock = FakeClock()
    commander = FakeCommander(clock, list(steps))
    directory = FakeDirectory()
    presence = MemoryPresence()
    metrics = Metrics()
    records: list[DecisionRecord] = []
    current = LoadedRules(rules or load_rules(RULES), 1, "test", 0.0) if loaded else None
    engine = Engine(
        metrics=metrics,
        commander=commander,
        rules=FakeRules(current),
        directory=directory,
        calls=calls or MemoryCallStore(),
        presence=presence,
        budget_ms=BUDGET_MS,
        clock=clock,
        sources=sources,
        on_decision=records.append,
        rollout=rollout,
        answers=AnswerTracker(metrics),
        max_inflight=max_inflight,
    )
    return Harness(engine, clock, commander, directory, presence, metrics, records)


def refused(status: int = 400) -> ClientRequestError:
    """A 4xx: certainly not applied."""
    return ClientRequestError("refused", method="transferCall", status=status)


# -- outcomes --------------------------------------------------------------------------------


async def test_transferred_to_the_personal_manager() -> None:
    """A client goes to his manager: one transferCall, outcome transferred, latency observed."""
    h = make()
    record = await h.call()
    assert h.commands() == [("transfer", "101")]
    assert (record.outcome, record.manager, record.matched) == (
        Outcome.TRANSFERRED,
        "ivanov",
        "client",
    )
    assert (record.attempts, record.answered) == (1, True)
    assert h.count(Outcome.TRANSFERRED) == h.observed() == 1
    assert record.latency_ms == pytest.approx(10.0)


async def test_commands_carry_the_deadline_of_the_budget() -> None:
    """Every command is bounded by receipt + decision_budget_ms."""
    h = make()
    received = h.clock.t
    await h.call()
    assert [deadline for _, _, deadline in h.commander.sent] == [received + BUDGET_MS / 1000]


async def test_nobody_available_is_released_to_the_pbx() -> None:
    """No manager at all (no fallback, otherwise: pbx): terminateCall, outcome fallback_pbx."""
    h = make(rules=load_rules(RULES.replace("managers: [sidorov]", "managers: []")))
    record = await h.call(UNKNOWN)
    assert h.commands() == [("terminate", None)]
    assert record.outcome is Outcome.FALLBACK_PBX
    assert record.reasons[-1].startswith("no manager available: terminate")


async def test_otherwise_wait_sends_nothing() -> None:
    """otherwise: wait: no command, outcome waited, no latency observed."""
    rules = load_rules(RULES.replace("managers: [sidorov]", "managers: []").replace("pbx", "wait"))
    h = make(rules=rules)
    record = await h.call(UNKNOWN)
    assert (h.commands(), record.outcome, h.observed()) == ([], Outcome.WAITED, 0)


async def test_no_rules_releases_the_call() -> None:
    """No rules loaded: terminateCall at once, with that reason."""
    h = make(loaded=False)
    record = await h.call()
    assert h.commands() == [("terminate", None)]
    assert record.outcome is Outcome.FALLBACK_PBX
    assert record.reasons == ("no rules loaded: release to the PBX",)


async def test_a_second_trying_for_the_call_is_a_duplicate() -> None:
    """The same call id again: no command, outcome duplicate."""
    h = make()
    await h.call(call_id="same")
    record = await h.call(call_id="same")
    assert h.commands() == [("transfer", "101")]
    assert record.outcome is Outcome.DUPLICATE


async def test_manager_on_a_call_is_skipped() -> None:
    """A busy personal manager: the prefix or fallback manager gets the call."""
    h = make()
    await h.presence.set_busy("101", "other-call", 60)
    record = await h.call()
    assert h.commands() == [("transfer", "103")]
    assert "ivanov is busy (workplace 101 is on a call)" in record.reasons


# -- failures: the ambiguous-answer rule -----------------------------------------------------


async def test_4xx_goes_to_the_next_candidate() -> None:
    """A 4xx means not applied: the next candidate gets the call."""
    h = make(Step(raises=refused()))
    record = await h.call()
    assert h.commands() == [("transfer", "101"), ("transfer", "103")]
    assert (record.outcome, record.manager, record.attempts) == (Outcome.TRANSFERRED, "sidorov", 2)
    assert "transfer to ivanov failed: refused" in record.reasons


async def test_refused_connection_goes_to_the_next_candidate() -> None:
    """A connection refused before sending: nothing reached MTT, the next candidate is safe."""
    down = UpstreamConnectionError("refused", method="transferCall", retryable=True)
    h = make(Step(raises=down))
    record = await h.call()
    assert h.commands() == [("transfer", "101"), ("transfer", "103")]
    assert record.outcome is Outcome.TRANSFERRED


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(ServerError("bad gateway", method="transferCall", status=502), id="5xx"),
        pytest.param(
            UpstreamConnectionError("reset", method="transferCall", retryable=False),
            id="broken-after-sending",
        ),
        pytest.param(UpstreamTimeoutError("slow", method="transferCall"), id="timeout"),
    ],
)
async def test_an_ambiguous_answer_gets_no_further_command(failure: UpstreamError) -> None:
    """5xx, a broken connection or a timeout inside the budget: MTT may have applied it."""
    h = make(Step(raises=failure))
    record = await h.call()
    assert h.commands() == [("transfer", "101")]
    assert record.outcome is Outcome.ERROR
    assert record.reasons[-1] == "MTT may have applied it: no further command"
    assert record.error is not None
    assert record.error.startswith(type(failure).__name__)


async def test_every_candidate_refused_releases_the_call() -> None:
    """Every transfer refused with time left: terminateCall, and the outcome is still error."""
    h = make(Step(raises=refused()), Step(raises=refused(404)))
    record = await h.call()
    assert h.commands() == [("transfer", "101"), ("transfer", "103"), ("terminate", None)]
    assert record.outcome is Outcome.ERROR
    assert record.reasons[-1] == "every candidate failed: release to the PBX"
    assert record.error == "ClientRequestError: refused"
    assert (record.manager, record.attempts, record.answered) == ("sidorov", 3, True)


async def test_release_after_refusals_can_fail_too() -> None:
    """Every transfer refused and the terminateCall too: error, with the terminate's error."""
    boom = ServerError("down", method="terminateCall", status=503)
    h = make(Step(raises=refused()), Step(raises=refused()), Step(raises=boom))
    record = await h.call()
    assert record.outcome is Outcome.ERROR
    assert record.error == "ServerError: down"


async def test_a_failed_terminate_is_an_error() -> None:
    """terminateCall refused inside the budget: error (no second command)."""
    h = make(Step(raises=refused()), loaded=False)
    record = await h.call()
    assert (h.commands(), record.outcome) == ([("terminate", None)], Outcome.ERROR)


async def test_transfer_answered_after_the_budget_is_a_missed_window() -> None:
    """MTT answers (or times out) only once the budget is spent: missed_window, nothing more."""
    late = UpstreamTimeoutError("deadline", method="transferCall")
    h = make(Step(takes_s=BUDGET_MS / 1000, raises=late))
    record = await h.call()
    assert h.commands() == [("transfer", "101")]
    assert record.outcome is Outcome.MISSED_WINDOW
    assert record.reasons[-2:] == (
        "transfer to ivanov failed: deadline",
        "decision budget spent",
    )
    assert h.observed() == 0  # nobody answered


async def test_no_command_once_the_budget_is_spent() -> None:
    """A refusal that used up the budget: no next transfer, no terminate; missed_window."""
    h = make(Step(takes_s=BUDGET_MS / 1000 + 0.1, raises=refused()))
    record = await h.call()
    assert h.commands() == [("transfer", "101")]
    assert record.outcome is Outcome.MISSED_WINDOW
    assert h.observed() == 1  # MTT answered the one command sent


async def test_release_is_not_sent_late() -> None:
    """Every candidate refused but the budget is spent by then: no terminateCall."""
    h = make(Step(raises=refused()), Step(takes_s=BUDGET_MS / 1000, raises=refused()))
    record = await h.call()
    assert [c for c, _ in h.commands()] == ["transfer", "transfer"]
    assert record.outcome is Outcome.MISSED_WINDOW


async def test_terminate_that_times_out_is_a_missed_window() -> None:
    """No rules and a terminateCall that outlives the budget: missed_window."""
    late = UpstreamTimeoutError("deadline", method="terminateCall")
    h = make(Step(takes_s=BUDGET_MS / 1000, raises=late), loaded=False)
    record = await h.call()
    assert record.outcome is Outcome.MISSED_WINDOW


@pytest.mark.parametrize(
    "failure",
    [
        NeedsLoginError("no token"),
        StorageError("redis down"),
        TokenUnavailableError("token endpoint 503", method="transferCall"),
    ],
    ids=["needs-login", "token-store-down", "token-endpoint-failing"],
)
async def test_nothing_sent_without_a_token(failure: Exception) -> None:
    """No usable token (or its store failed): error, counted, nothing else attempted."""
    h = make(Step(raises=failure))
    record = await h.call()
    assert h.commands() == [("transfer", "101")]
    assert record.outcome is Outcome.ERROR
    assert (record.answered, h.observed()) == (False, 0)


async def test_a_bug_costs_one_call_not_the_engine() -> None:
    """An unexpected exception: outcome error with its repr; the next call is decided."""
    h = make(Step(raises=RuntimeError("bug")))
    record = await h.call(call_id="a")
    assert (record.outcome, record.error) == (Outcome.ERROR, "RuntimeError('bug')")
    assert (await h.call(call_id="b")).outcome is Outcome.TRANSFERRED


# -- what gets a decision ----------------------------------------------------------------------


async def test_only_parked_calls_are_decided() -> None:
    """A trying to a number that is not ours, a forwarded leg, a leg to a workplace: ignored."""
    h = make()
    not_ours = CallEvent(
        call=CallRef("x1"),
        state=CallState.TRYING,
        type=CallType.INCOMING,
        caller=Party(id=CLIENT),
        callee=Party(id="74950000001"),
    )
    forwarded = CallEvent(
        call=CallRef("x2"),
        state=CallState.TRYING,
        type=CallType.INCOMING,
        caller=Party(id=CLIENT),
        callee=Party(id=NUMBER, forwarders=("74951112233",)),
    )
    for event in (not_ours, forwarded):
        h.engine.handle(event, h.clock.t)
    await h.engine.settle()
    assert (h.commands(), h.records) == ([], [])


async def test_presence_follows_connected_and_finished() -> None:
    """connected marks the workplace busy, finished frees it, in order."""
    h = make()

    def leg(state: CallState) -> CallEvent:
        return CallEvent(
            call=CallRef("p1"),
            state=state,
            type=CallType.INCOMING,
            caller=Party(id=CLIENT),
            callee=Party(id="101", account_id="101"),
        )

    h.engine.handle(leg(CallState.CONNECTED), h.clock.t)
    await h.engine.settle()
    assert h.presence.busy() == {"101"}
    h.engine.handle(leg(CallState.FINISHED), h.clock.t)
    await h.engine.settle()
    assert h.presence.busy() == frozenset()


async def test_vpbx_notifications_refresh_the_directory() -> None:
    """numbersChanged and workplacesChanged each ask for their refresh."""
    h = make()
    h.engine.handle(VpbxEvent(VpbxEventType.NUMBERS_CHANGED, "numbersChanged"), h.clock.t)
    h.engine.handle(VpbxEvent(VpbxEventType.WORKPLACES_CHANGED, "workplacesChanged"), h.clock.t)
    assert h.directory.refreshes == ["numbers", "workplaces"]


async def test_drain_stops_taking_calls() -> None:
    """After a drain, a new trying gets no decision."""
    h = make()
    assert await h.engine.drain(1.0) == 0
    h.engine.handle(trying(CLIENT), h.clock.t)
    assert h.engine.inflight == 0


async def test_a_drain_that_times_out_cancels_and_still_logs_the_decision() -> None:
    """A decision stuck past the drain timeout is cancelled, yet reported (outcome error)."""
    h = make()
    h.commander.hold = asyncio.Event()
    h.engine.handle(trying(CLIENT), h.clock.t)
    await asyncio.sleep(0)  # let the task reach the commander
    assert await h.engine.drain(0.01) == 1
    assert [r.outcome for r in h.records] == [Outcome.ERROR]


# -- the pipeline ------------------------------------------------------------------------------


@dataclass
class RecordingCalls:
    """A call store answering reads from a dict, recording each step."""

    answers: dict[Read, str | None]
    steps: list[tuple[str, tuple[Read, ...]]] = field(default_factory=list)

    async def claim_and_read(self, call_id: str, ttl_s: float, reads: Sequence[Read]) -> Gathered:
        """Claimed, with whatever ``answers`` has (a read missing there is unanswered)."""
        self.steps.append((call_id, tuple(reads)))
        return Gathered(True, {r: self.answers[r] for r in reads if r in self.answers})


async def test_claim_and_every_declared_read_in_one_step() -> None:
    """One storage step per call carries every read the sources declared; its answer decides.
    The learned map is read only while the rules ``learn`` (nothing learned is used otherwise)."""
    read = Read(CLIENTS_SPACE, "79219462761")
    calls = RecordingCalls({read: "petrova"})
    h = make(calls=calls)
    record = await h.call()
    assert calls.steps == [("c1", (read,))]
    assert (record.manager, record.reasons[0]) == (
        "petrova",
        "caller 79219462761 is client of petrova (client store)",
    )
    learning = RULES.replace("version: 1", "version: 2") + "learn: {min_talk_s: 10}\n"
    calls = RecordingCalls({read: "petrova"})
    await make(calls=calls, rules=load_rules(learning)).call()
    assert calls.steps == [("c1", (read, Read(LEARNED_SPACE, "79219462761")))]


async def test_an_unanswered_read_falls_back_to_the_rules() -> None:
    """The storage could not answer the client map: the rules' clients decide."""
    h = make(calls=RecordingCalls({}))
    assert (await h.call()).manager == "ivanov"


@dataclass
class FakeLookup:
    """A fetching source (like a CRM lookup) that names ``manager`` and counts its calls."""

    manager: str | None
    name: str = "lookup"
    calls: int = 0
    fail: bool = False

    @property
    def kind(self) -> MatchKind:
        """Reported as a client match."""
        return MatchKind.CLIENT

    def reads(self, caller: str) -> tuple[Read, ...]:
        """Nothing from the storage."""
        return ()

    def resolve(self, context: CallerContext, rules: Rules) -> Verdict:
        """What the fetch found."""
        return context.fetched.get(self.name, Verdict(None, ("lookup not consulted",)))

    async def fetch(self, context: CallerContext, rules: Rules) -> Verdict:
        """One 'request'."""
        self.calls += 1
        if self.fail:
            raise RuntimeError("crm bug")
        return Verdict(self.manager, (f"lookup names {self.manager}",))


async def test_a_fetching_source_runs_only_when_the_sources_before_it_named_nobody() -> None:
    """clients names the caller's manager: the lookup behind it is never asked."""
    lookup = FakeLookup("petrova")
    sources: dict[str, CandidateSource] = {
        "clients": ClientsSource(),
        "lookup": lookup,
        "prefixes": PrefixSource(),
    }
    h = make(sources=sources)
    assert (await h.call()).manager == "ivanov"
    assert lookup.calls == 0
    record = await h.call(UNKNOWN, call_id="c2")
    assert (lookup.calls, record.manager) == (1, "petrova")
    assert "lookup names petrova" in record.reasons


async def test_a_crashing_fetching_source_costs_its_verdict_only() -> None:
    """A source that raises is skipped with a reason; the fallback still gets the call."""
    lookup = FakeLookup("petrova", fail=True)
    h = make(sources={"clients": ClientsSource(), "lookup": lookup})
    record = await h.call(UNKNOWN)
    assert (record.outcome, record.manager) == (Outcome.TRANSFERRED, "sidorov")
    assert "lookup failed: RuntimeError" in record.reasons


# -- shadow mode and who answered --------------------------------------------------------------


async def test_shadow_decides_logs_the_would_be_manager_and_only_releases() -> None:
    """mode: shadow: one terminateCall at once; the record names whom live mode would call."""
    h = make(rollout=Rollout("shadow"))
    record = await h.call()
    assert h.commands() == [("terminate", None)]
    assert (record.outcome, record.manager, record.workplace) == (Outcome.SHADOW, "ivanov", "101")
    assert record.reasons[-2:] == (
        "shadow: would transfer to ivanov 101",
        "shadow: released to the PBX (terminateCall)",
    )
    assert h.count(Outcome.SHADOW) == h.observed() == 1


async def test_shadow_releases_even_what_live_would_leave_waiting() -> None:
    """otherwise: wait in shadow: still released at once (no 5 s of silence for the client)."""
    rules = load_rules(RULES.replace("managers: [sidorov]", "managers: []").replace("pbx", "wait"))
    h = make(rules=rules, rollout=Rollout("shadow"))
    record = await h.call(UNKNOWN)
    assert h.commands() == [("terminate", None)]
    assert record.reasons[-2] == "shadow: would wait for the PBX"


async def test_a_failed_shadow_release_is_reported() -> None:
    """A shadow release MTT refuses: still outcome shadow, with the error and a reason."""
    h = make(Step(raises=refused()), rollout=Rollout("shadow"))
    record = await h.call()
    assert (record.outcome, record.error) == (Outcome.SHADOW, "ClientRequestError: refused")
    assert record.reasons[-1] == "shadow: release failed: refused"


async def test_live_numbers_make_only_those_lines_live() -> None:
    """mode: live with live_numbers (any spelling): calls to other numbers are shadow."""
    this_line = make(rollout=Rollout("live", ["+7 (499) 649-78-03"]))
    assert (await this_line.call()).outcome is Outcome.TRANSFERRED
    other_line = make(rollout=Rollout("live", ["74950000001"]))
    assert (await other_line.call()).outcome is Outcome.SHADOW
    assert other_line.commands() == [("terminate", None)]


async def test_answers_are_counted_by_who_picked_up() -> None:
    """connected at the own manager's workplace: personal; at a fallback's: fallback; elsewhere:
    other; finished unanswered: nobody; each decided call once, an undecided call never."""
    h = make()

    def leg(call_id: str, state: CallState, workplace: str) -> CallEvent:
        return CallEvent(
            call=CallRef(call_id),
            state=state,
            type=CallType.INCOMING,
            caller=Party(id=CLIENT),
            callee=Party(id=workplace, account_id=workplace),
        )

    for call_id, state, workplace in (
        ("p", CallState.CONNECTED, "101"),
        ("f", CallState.CONNECTED, "103"),
        ("o", CallState.CONNECTED, "999"),
        ("n", CallState.FINISHED, "101"),
    ):
        await h.call(call_id=call_id)
        h.engine.handle(leg(call_id, state, workplace), h.clock.t)
        h.engine.handle(leg(call_id, CallState.FINISHED, workplace), h.clock.t)
    h.engine.handle(leg("never-decided", CallState.CONNECTED, "101"), h.clock.t)
    await h.engine.settle()
    counts = {
        by: h.metrics.registry.get_sample_value("mtt_router_answered_total", {"by": by})
        for by in ("personal", "fallback", "other", "nobody")
    }
    assert counts == {"personal": 1, "fallback": 1, "other": 1, "nobody": 1}


async def test_inflight_decisions_counts_decisions_only() -> None:
    """mtt_router_inflight_decisions is 1 while a call is decided, 0 after; presence work is not
    a decision."""
    h = make()
    h.commander.hold = asyncio.Event()

    def inflight() -> float | None:
        return h.metrics.registry.get_sample_value("mtt_router_inflight_decisions")

    h.engine.handle(trying(CLIENT), h.clock.t)
    connected = CallEvent(
        call=CallRef("other"),
        state=CallState.CONNECTED,
        type=CallType.INCOMING,
        caller=Party(id=UNKNOWN),
        callee=Party(id="102", account_id="102"),
    )
    h.engine.handle(connected, h.clock.t)
    await asyncio.sleep(0)  # the decision reaches the commander; presence is written
    assert inflight() == 1
    h.commander.hold.set()
    await h.engine.settle()
    assert (inflight(), h.records[-1].outcome) == (0, Outcome.TRANSFERRED)


async def test_over_max_inflight_a_call_is_shed_without_a_command() -> None:
    """With max_inflight decisions in progress, the next parked call gets no command (outcome
    shed, one log line for many); once a slot is free, calls are decided again."""
    h = make(max_inflight=1)
    h.commander.hold = asyncio.Event()
    with capture_logs() as logs:
        for call_id in ("first", "second", "third"):
            h.engine.handle(trying(CLIENT, call_id), h.clock.t)
        await asyncio.sleep(0)
    assert h.count(Outcome.SHED) == 2
    assert [e["held_back"] for e in logs if e["event"] == "decision_shed"] == [0]
    h.commander.hold.set()
    await h.engine.settle()
    assert h.commands() == [("transfer", "101")]  # the first call only
    h.commander.hold = None
    assert (await h.call(call_id="fourth")).outcome is Outcome.TRANSFERRED


async def test_the_last_slots_are_kept_for_listed_clients() -> None:
    """Near max_inflight (a flood of unknown callers), a caller the rules list as a client is
    still decided; an unknown one is shed; at the cap itself everyone is."""
    h = make(max_inflight=5)  # one slot (a fifth) kept for listed clients
    h.commander.hold = asyncio.Event()
    for i in range(6):
        h.engine.handle(trying(UNKNOWN, f"flood-{i}"), h.clock.t)
    assert h.count(Outcome.SHED) == 2  # the fifth and sixth unknown callers
    h.engine.handle(trying(CLIENT, "client-1"), h.clock.t)
    assert h.count(Outcome.SHED) == 2  # the kept slot
    h.engine.handle(trying(CLIENT, "client-2"), h.clock.t)
    assert h.count(Outcome.SHED) == 3  # at the cap: shed too
    await asyncio.sleep(0)
    h.commander.hold.set()
    await h.engine.settle()
    decided = {r.call_id for r in h.records if r.outcome is Outcome.TRANSFERRED}
    assert decided == {"flood-0", "flood-1", "flood-2", "flood-3", "client-1"}


async def test_a_2xx_whose_body_cannot_be_read_gets_no_second_command() -> None:
    """MTT answered 2xx with a body we could not read: it may have applied the transfer."""
    unreadable = ServerError("transferCall: answer is not JSON", method="transferCall", status=200)
    h = make(Step(raises=unreadable))
    record = await h.call()
    assert (h.commands(), record.outcome) == ([("transfer", "101")], Outcome.ERROR)
