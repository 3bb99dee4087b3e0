"""No-answer re-routes (rules ``no_answer``) on the engine with fakes: no sockets, no sleeping.

The fakes of tests/test_engine_unit.py (a commander scripting MTT's answers, a fake clock) plus a
fake timer the test fires by hand: after the engine transferred a parked call, a ``hiding`` at
that workplace or the ``after_s`` timer sends ``transferCall`` to the next candidate of the
decision, at most ``max_hops`` times; ``connected`` or ``finished`` ends the watch.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.context import MatchKind
from router.dispatch import DecisionRecord, Outcome
from router.engine import Engine
from router.errors import StorageError
from router.events import CallEvent, CallRef, CallState, CallType, Party
from router.metrics import Metrics
from router.reroute import Trigger, Watch, next_hop, on_event
from router.rollout import Rollout
from router.routing import Target
from router.rules import Rules, load_rules
from router.rules.model import NoAnswer
from router.rules.source import LoadedRules
from router.state.memory import MemoryCallStore, MemoryPresence, MemoryReroutes
from router.state.protocols import Reroutes
from tests.test_engine_unit import (
    CLIENT,
    NUMBER,
    FakeClock,
    FakeCommander,
    FakeDirectory,
    FakeRules,
    Step,
    refused,
    trying,
)

RULES = """\
version: 2
timezone: Europe/Moscow
managers:
  ivanov: {workplace: "101", deputy: petrova}
  petrova: {workplace: "102"}
  sidorov: {workplace: "103"}
  kozlov: {workplace: "104"}
clients:
  "+7 921 946-27-61": ivanov
no_answer: {after_s: 20, max_hops: 2}
fallback:
  managers: [sidorov, kozlov]
  otherwise: pbx
"""
"""The client's manager ivanov (101), his deputy petrova (102), fallback sidorov then kozlov."""
WORKPLACES = frozenset({"101", "102", "103", "104"})


@dataclass
class FakeTimer:
    """One scheduled callback."""

    delay_s: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        """Do not run it."""
        self.cancelled = True


@dataclass
class Timers:
    """The re-route timers, fired by the test."""

    made: list[FakeTimer] = field(default_factory=list)

    def later(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        """Schedule ``callback`` (it runs when the test fires it)."""
        timer = FakeTimer(delay_s, callback)
        self.made.append(timer)
        return timer

    def armed(self) -> list[float]:
        """The delays of the timers still waiting."""
        return [t.delay_s for t in self.made if not t.cancelled and not t.fired]

    def fire(self) -> None:
        """Run every timer still waiting (as if ``after_s`` passed)."""
        for timer in list(self.made):
            if not timer.cancelled and not timer.fired:
                timer.fired = True
                timer.callback()


@dataclass
class Harness:
    """An engine on fakes with re-routes, and what it did."""

    engine: Engine
    clock: FakeClock
    commander: FakeCommander
    presence: MemoryPresence
    metrics: Metrics
    timers: Timers
    store: Reroutes
    records: list[DecisionRecord]

    async def call(self, call_id: str = "c1") -> DecisionRecord:
        """Deliver a parked ``trying`` of the client and return its decision."""
        self.engine.handle(trying(CLIENT, call_id), self.clock.t)
        await self.engine.settle()
        return self.records[-1]

    async def leg(self, state: CallState, workplace: str | None, call_id: str = "c1") -> None:
        """Deliver a later notification of the call, its leg at ``workplace``."""
        event = CallEvent(
            call=CallRef(call_id, "tag-1"),
            state=state,
            type=CallType.INCOMING,
            caller=Party(id=CLIENT),
            callee=Party(id=workplace or NUMBER),
            transport_id="t-1",
        )
        self.engine.handle(event, self.clock.t)
        await self.engine.settle()

    async def fire(self) -> None:
        """Let ``after_s`` pass."""
        self.timers.fire()
        await self.engine.settle()

    def transfers(self) -> list[str | None]:
        """Workplaces MTT got a transferCall to, in order."""
        return [w for command, w, _ in self.commander.sent if command == "transfer"]

    def reroutes(self, result: str) -> float:
        """``mtt_router_reroutes_total{result}``."""
        value = self.metrics.registry.get_sample_value(
            "mtt_router_reroutes_total", {"result": result}
        )
        return value or 0.0

    def watched(self) -> int:
        """Calls the engine watches now."""
        return self.engine.bounds()["reroutes"].size


def make(
    *steps: Step,
    rules: Rules | None = None,
    rollout: Rollout | None = None,
    store: Reroutes | None = None,
) -> Harness:
    """A harness whose commander answers ``steps`` in order (then OK)."""
    clock = FakeClock()
    commander = FakeCommander(clock, list(steps))
    presence = MemoryPresence()
    metrics = Metrics()
    records: list[DecisionRecord] = []
    reroutes = store if store is not None else MemoryReroutes()
    engine = Engine(
        metrics=metrics,
        commander=commander,
        rules=FakeRules(LoadedRules(rules or load_rules(RULES), 1, "test", 0.0)),
        directory=FakeDirectory(workplace_ids=WORKPLACES),
        calls=MemoryCallStore(),
        presence=presence,
        budget_ms=3500,
        clock=clock,
        on_decision=records.append,
        rollout=rollout,
        reroutes=reroutes,
    )
    timers = Timers()
    engine.reroutes.later = timers.later
    return Harness(engine, clock, commander, presence, metrics, timers, reroutes, records)


def reroute_lines(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The ``reroute`` log lines."""
    return [line for line in logs if line["event"] == "reroute"]


# -- what moves a call on ---------------------------------------------------------------------


async def test_hiding_moves_the_call_to_the_deputy() -> None:
    """The manager declines (hiding at his workplace): transferCall to his deputy at once, one
    reroute line with the reason chain, reroutes_total{transferred}."""
    h = make()
    record = await h.call()
    assert (record.outcome, h.transfers(), h.timers.armed()) == (
        Outcome.TRANSFERRED,
        ["101"],
        [20.0],
    )
    with capture_logs() as logs:
        await h.leg(CallState.SHOWING, "101")
        await h.leg(CallState.HIDING, "101")
    assert h.transfers() == ["101", "102"]
    [line] = reroute_lines(logs)
    assert (line["result"], line["hop"], line["trigger"], line["manager"]) == (
        "transferred",
        1,
        "hiding",
        "petrova",
    )
    assert line["reasons"] == [
        "ivanov 101 let the call go (hiding)",
        "deputy petrova is available",
        "re-route to petrova 102",
    ]
    assert (h.reroutes("transferred"), h.reroutes("failed")) == (1, 0)
    assert h.timers.armed() == [20.0]  # the deputy is watched in turn


async def test_no_connected_within_after_s_moves_it_on() -> None:
    """Nobody picks up for after_s: the timer sends the call to the next candidate."""
    h = make()
    await h.call()
    await h.leg(CallState.SHOWING, "101")
    with capture_logs() as logs:
        await h.fire()
    assert h.transfers() == ["101", "102"]
    [line] = reroute_lines(logs)
    assert (line["trigger"], line["reasons"][0]) == (
        "no_answer",
        "ivanov 101 did not answer in 20 s",
    )


@pytest.mark.parametrize("state", [CallState.CONNECTED, CallState.FINISHED])
async def test_an_answer_or_the_end_stops_the_watch(state: CallState) -> None:
    """``connected`` (marked answered in the storage too) or ``finished``: nothing more, ever."""
    h = make()
    await h.call()
    await h.leg(state, "101" if state is CallState.CONNECTED else None)
    assert (h.timers.armed(), h.watched()) == ([], 0)
    await h.fire()
    await h.leg(CallState.HIDING, "101")
    assert h.transfers() == ["101"]
    assert h.reroutes("transferred") == h.reroutes("failed") == 0
    answered = state is CallState.CONNECTED
    assert await h.store.claim_hop("c1", 1) is not answered


async def test_a_connected_anywhere_stops_it() -> None:
    """Answered somewhere else (the PBX's own choice): no re-route either."""
    h = make()
    await h.call()
    await h.leg(CallState.CONNECTED, "104")
    await h.fire()
    assert (h.transfers(), h.watched()) == (["101"], 0)


async def test_at_most_max_hops() -> None:
    """max_hops 2: ivanov -> petrova -> sidorov, then kozlov is never tried and nothing is
    watched; the hiding our own re-route causes at the previous workplace moves nothing."""
    h = make()
    await h.call()
    await h.leg(CallState.HIDING, "101")
    await h.leg(CallState.HIDING, "101")  # hiding of the ringing our re-route ended
    assert h.transfers() == ["101", "102"]
    await h.fire()
    assert h.transfers() == ["101", "102", "103"]
    assert (h.timers.armed(), h.watched()) == ([], 0)
    await h.leg(CallState.HIDING, "103")
    await h.fire()
    assert h.transfers() == ["101", "102", "103"]
    assert h.reroutes("transferred") == 2


async def test_a_busy_candidate_is_skipped() -> None:
    """The deputy went on a call since the decision: the next candidate gets it."""
    h = make()
    await h.call()
    await h.presence.set_busy("102", "other-call", 60)
    with capture_logs() as logs:
        await h.leg(CallState.HIDING, "101")
    assert h.transfers() == ["101", "103"]
    [line] = reroute_lines(logs)
    assert line["reasons"][1:] == [
        "deputy petrova is busy (workplace 102 is on a call)",
        "fallback sidorov is available",
        "re-route to sidorov 103",
    ]


async def test_nobody_left_sends_nothing() -> None:
    """Every remaining candidate busy: no command, one reroute_skipped line, nothing counted."""
    h = make()
    await h.call()
    for workplace in ("102", "103", "104"):
        await h.presence.set_busy(workplace, f"other-{workplace}", 60)
    with capture_logs() as logs:
        await h.leg(CallState.HIDING, "101")
    assert (h.transfers(), h.watched()) == (["101"], 0)
    [skipped] = [line for line in logs if line["event"] == "reroute_skipped"]
    assert skipped["reasons"][-1] == "no candidate left: the PBX goes on with the call"
    assert h.reroutes("transferred") == h.reroutes("failed") == 0


# -- when it must not -------------------------------------------------------------------------


async def test_shadow_never_reroutes() -> None:
    """Shadow mode: the call was only released, so nothing is watched or re-routed."""
    h = make(rollout=Rollout("shadow", ()))
    record = await h.call()
    assert record.outcome is Outcome.SHADOW
    await h.leg(CallState.HIDING, "101")
    await h.fire()
    assert (h.transfers(), h.timers.armed(), h.watched()) == ([], [], 0)


async def test_without_the_rule_nothing_is_watched() -> None:
    """Rules without no_answer: a transferred call is not watched."""
    h = make(rules=load_rules(RULES.replace("no_answer: {after_s: 20, max_hops: 2}\n", "")))
    await h.call()
    await h.leg(CallState.HIDING, "101")
    assert (h.transfers(), h.timers.armed(), h.watched()) == (["101"], [], 0)


async def test_a_hop_someone_else_claimed_is_not_sent() -> None:
    """Another replica saw the call answered (marked in the shared storage): no re-route."""
    h = make()
    await h.call()
    await h.store.mark_answered("c1")
    with capture_logs() as logs:
        await h.fire()
    assert (h.transfers(), h.watched()) == (["101"], 0)
    assert [line["event"] for line in logs] == ["reroute_not_claimed"]


class DownStore(MemoryReroutes):
    """A storage that cannot answer a claim."""

    async def claim_hop(self, call_id: str, hop: int) -> bool:
        """Always fails."""
        raise StorageError("redis reroute.claim: down")


async def test_the_storage_down_means_no_reroute() -> None:
    """The claim cannot be made: fail closed (no command), counted as failed, logged."""
    h = make(store=DownStore())
    await h.call()
    with capture_logs() as logs:
        await h.leg(CallState.HIDING, "101")
    assert h.transfers() == ["101"]
    [line] = reroute_lines(logs)
    assert (line["result"], line["reasons"][-1]) == (
        "failed",
        "the storage did not answer: not re-routed",
    )
    assert h.reroutes("failed") == 1


async def test_a_refused_reroute_counts_failed_and_ends_the_watch() -> None:
    """MTT refuses the re-route (4xx): reroutes_total{failed}, no further command."""
    h = make(Step(), Step(raises=refused(404)))
    await h.call()
    with capture_logs() as logs:
        await h.leg(CallState.HIDING, "101")
    assert h.transfers() == ["101", "102"]
    [line] = reroute_lines(logs)
    assert line["result"] == "failed"
    assert line["reasons"][-1] == "re-route to petrova failed: refused"
    assert (h.reroutes("failed"), h.watched(), h.timers.armed()) == (1, 0, [])


async def test_drain_drops_pending_reroutes_with_one_line() -> None:
    """SIGTERM: the watched calls are dropped, one log line counts them, no timer left."""
    h = make()
    await h.call("c1")
    await h.call("c2")
    assert h.watched() == 2
    with capture_logs() as logs:
        assert await h.engine.drain(1.0) == 0
    assert [(line["event"], line.get("count")) for line in logs] == [("reroutes_dropped", 2)]
    assert (h.timers.armed(), h.watched()) == ([], 0)
    await h.fire()
    assert h.transfers() == ["101", "101"]


# -- the pure parts and the memory store ------------------------------------------------------


def test_only_a_hiding_where_the_call_was_sent_moves_it() -> None:
    """hiding at the watched workplace: hop; elsewhere: keep; connected/finished: end."""
    watch = Watch(CallRef("c", "t"), None, "ivanov", "101", (), 0, NoAnswer())
    assert [
        on_event(watch, CallState.HIDING, "101"),
        on_event(watch, CallState.HIDING, "102"),
        on_event(watch, CallState.SHOWING, "101"),
        on_event(watch, CallState.CONNECTED, "102"),
        on_event(watch, CallState.FINISHED, None),
    ] == ["hop", "keep", "keep", "end", "end"]


def test_next_hop_skips_the_busy() -> None:
    """The first remaining candidate not on a call; nobody: no target."""
    remaining = (
        Target("petrova", "102", MatchKind.DEPUTY),
        Target("sid", "103", MatchKind.FALLBACK),
    )
    watch = Watch(CallRef("c", "t"), None, "ivanov", "101", remaining, 0, NoAnswer())
    hop = next_hop(watch, Trigger.TIMEOUT, frozenset({"102"}))
    assert (hop.target, hop.remaining) == (remaining[1], ())
    assert next_hop(watch, Trigger.HIDING, frozenset({"102", "103"})).target is None


async def test_memory_store_claims_each_hop_once_and_none_after_an_answer() -> None:
    """Hop 1 once, then hop 2 once; a marked call gets no hop; the map stays bounded."""
    store = MemoryReroutes(max_calls=2)
    assert [await store.claim_hop("a", 1), await store.claim_hop("a", 1)] == [True, False]
    assert [await store.claim_hop("a", 2), await store.claim_hop("a", 1)] == [True, False]
    await store.mark_answered("b")
    assert not await store.claim_hop("b", 1)
    await store.mark_answered("c")
    assert store.bound() == (2, 2)
    assert await store.claim_hop("a", 3)  # "a" was pushed out (the oldest): known no more


async def test_memory_store_entries_expire() -> None:
    """An entry leaves after its TTL."""
    now = [0.0]
    store = MemoryReroutes(clock=lambda: now[0], ttl_s=10)
    await store.mark_answered("a")
    now[0] = 11.0
    assert await store.claim_hop("a", 1)
    assert store.bound().size == 1
