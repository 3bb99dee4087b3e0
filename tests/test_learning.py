"""Rules ``learn``: which calls teach (router/learning.py) and how a lesson routes (LearnedSource).

The tracker is driven as the engine drives it: ``decided`` before the commands, ``carried_out``
with their attempts, then ``observe`` for each later notification with its receipt time on the
engine's monotonic clock (given here explicitly: our own clock is what the rule times).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

from router.context import CallerContext, MatchKind, Read
from router.dispatch import Attempt, Command, Result
from router.events import CallEvent, CallRef, CallState, CallType, Party
from router.learning import DAY_S, LearningTracker, Lesson
from router.routing import decide
from router.rules import Rules, load_rules
from router.rules.model import Learn
from router.rules.source import LoadedRules
from router.sources import DEFAULT_SOURCES, LEARNED_SPACE, LearnedSource, in_order, reads_for

IVANOV_WP, PETROVA_WP, SIDOROV_WP, SHARED_WP = "101", "102", "103", "104"
CALLER = "79990001122"
NOW = datetime(2027, 1, 12, 8, 0, tzinfo=UTC)

RULES = load_rules(
    f"""\
version: 2
timezone: Europe/Moscow
managers:
  ivanov:  {{workplace: "{IVANOV_WP}"}}
  petrova: {{workplace: "{PETROVA_WP}"}}
  sidorov: {{workplace: "{SIDOROV_WP}"}}
  desk1:   {{workplace: "{SHARED_WP}"}}
  desk2:   {{workplace: "{SHARED_WP}"}}
  reception: {{workplace: "105"}}
clients:
  "+7 921 946-27-61": ivanov
learn: {{min_talk_s: 10, ttl_days: 30, exclude: [reception]}}
fallback:
  managers: [sidorov]
  otherwise: pbx
"""
)


class FakeStore:
    """A LearnedStore that records what it was taught."""

    def __init__(self) -> None:
        self.taught: list[tuple[str, str, float]] = []

    def remember(self, number: str, manager: str, ttl_s: float) -> None:
        self.taught.append((number, manager, ttl_s))

    async def get(self, number: str) -> None:
        return None

    async def forget(self, number: str) -> bool:
        return False


class FakeRules:
    """A RulesView whose rules a test may swap."""

    def __init__(self, rules: Rules | None) -> None:
        self.rules = rules

    @property
    def current(self) -> LoadedRules | None:
        return None if self.rules is None else LoadedRules(self.rules, 1, "test", 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(
    rules: Rules | None = RULES,
    *,
    max_calls: int = 1000,
    ttl_s: float = 3600.0,
    clock: Callable[[], float] | None = None,
) -> tuple[LearningTracker, FakeStore, FakeRules]:
    store, view = FakeStore(), FakeRules(rules)
    learning = LearningTracker(
        store, view, max_calls=max_calls, ttl_s=ttl_s, clock=clock if clock is not None else Clock()
    )
    return learning, store, view


def event(call_id: str, state: CallState, duration_s: int | None = None) -> CallEvent:
    """A leg of ``call_id``; the workplace is passed to ``observe`` as the engine finds it."""
    return CallEvent(
        CallRef(call_id, "t"),
        state,
        CallType.INCOMING,
        Party(id=CALLER),
        Party(id="74996497803"),
        duration_s=duration_s,
        raw_state=state.value,
    )


TRANSFERRED_TO_SIDOROV = (
    Attempt(Command.TRANSFER, Result.APPLIED, "sidorov", SIDOROV_WP, answered=True),
)
RELEASED = (Attempt(Command.TERMINATE, Result.APPLIED, answered=True),)


def decide_call(
    learning: LearningTracker,
    call_id: str = "c1",
    attempts: tuple[Attempt, ...] = TRANSFERRED_TO_SIDOROV,
    rules: Rules = RULES,
    caller: str = CALLER,
) -> None:
    """What the engine does for a parked call: decide, then carry it out."""
    decision = decide(CallerContext.of(caller, now=NOW), rules)
    learning.decided(call_id, rules, decision)
    learning.carried_out(call_id, attempts)


def talk(
    learning: LearningTracker,
    seconds: float,
    *,
    call_id: str = "c1",
    workplace: str = SIDOROV_WP,
    duration_s: int | None = None,
    start: float = 500.0,
) -> Lesson | None:
    """``connected`` at ``workplace``, then ``finished`` ``seconds`` later by our clock."""
    assert learning.observe(event(call_id, CallState.CONNECTED), workplace, start) is None
    return learning.observe(
        event(call_id, CallState.FINISHED, duration_s), workplace, start + seconds
    )


# -- what teaches ---------------------------------------------------------------------------


def test_a_long_enough_conversation_teaches_the_manager_for_ttl_days() -> None:
    """Transferred to the fallback manager, talked past min_talk_s: caller -> sidorov."""
    learning, store, _ = tracker()
    decide_call(learning)
    lesson = talk(learning, 10.0)
    assert lesson == Lesson(CALLER, "sidorov", SIDOROV_WP, 10.0)
    assert store.taught == [(CALLER, "sidorov", 30 * DAY_S)]
    assert len(learning) == 0  # the call ended: no longer followed


def test_a_shorter_conversation_teaches_nothing() -> None:
    learning, store, _ = tracker()
    decide_call(learning)
    assert talk(learning, 9.9) is None
    assert store.taught == []
    assert len(learning) == 0


def test_min_talk_is_timed_by_our_clock_not_by_the_duration_field() -> None:
    """MTT's duration saying 600 s does not make a 2 s conversation (by our clock) teach."""
    learning, store, _ = tracker()
    decide_call(learning)
    assert talk(learning, 2.0, duration_s=600) is None
    decide_call(learning, "c2")
    assert talk(learning, 12.0, call_id="c2", duration_s=None) is not None  # absent: our clock
    assert store.taught == [(CALLER, "sidorov", 30 * DAY_S)]


def test_a_duration_much_less_than_our_clock_teaches_nothing() -> None:
    """30 s by our clock, MTT says 5 s: a finished delivered late (or replayed): not learned.
    Whole-second rounding is allowed for: 14 s (+1) is half of 30."""
    learning, store, _ = tracker()
    decide_call(learning, "late")
    assert talk(learning, 30.0, call_id="late", duration_s=5) is None
    decide_call(learning, "rounded")
    assert talk(learning, 30.0, call_id="rounded", duration_s=14) is not None
    assert [number for number, _, _ in store.taught] == [CALLER]


def test_a_call_released_to_the_pbx_teaches_the_manager_who_took_it() -> None:
    """terminateCall applied (or a shadow release): the PBX rang sidorov; his workplace is his
    alone, so he is learned."""
    learning, _, _ = tracker()
    decide_call(learning, attempts=RELEASED)
    assert talk(learning, 15.0) == Lesson(CALLER, "sidorov", SIDOROV_WP, 15.0)


def test_a_call_moved_away_is_timed_until_it_left() -> None:
    """connected at sidorov, hiding there 12 s later (moved away), finished much later: the
    12 s count, for sidorov. A later connected elsewhere starts the clock again."""
    learning, store, _ = tracker()
    decide_call(learning)
    learning.observe(event("c1", CallState.CONNECTED), SIDOROV_WP, 100.0)
    learning.observe(event("c1", CallState.CONNECTED), SIDOROV_WP, 101.0)  # redelivered
    learning.observe(event("c1", CallState.HIDING), SIDOROV_WP, 112.0)
    assert learning.observe(event("c1", CallState.FINISHED), None, 500.0) == Lesson(
        CALLER, "sidorov", SIDOROV_WP, 12.0
    )
    decide_call(learning, "c2")
    learning.observe(event("c2", CallState.CONNECTED), SIDOROV_WP, 100.0)
    learning.observe(event("c2", CallState.HIDING), SIDOROV_WP, 150.0)
    learning.observe(event("c2", CallState.CONNECTED), PETROVA_WP, 151.0)
    assert learning.observe(event("c2", CallState.FINISHED), None, 155.0) is None  # 4 s there
    assert len(store.taught) == 1


# -- what does not ---------------------------------------------------------------------------


def test_calls_we_never_decided_teach_nothing() -> None:
    """A forged connected/finished pair for a call id the daemon never decided."""
    learning, store, _ = tracker()
    decide_call(learning, "real")
    assert talk(learning, 60.0, call_id="forged", duration_s=60) is None
    assert store.taught == []
    assert len(learning) == 1  # only the real call is followed


def test_calls_mtt_took_no_command_for_teach_nothing() -> None:
    """Every command refused (MTT knows no such call), or none sent in time: not followed."""
    learning, store, _ = tracker()
    refused = (
        Attempt(Command.TRANSFER, Result.REFUSED, "sidorov", SIDOROV_WP),
        Attempt(Command.TERMINATE, Result.REFUSED),
    )
    decide_call(learning, "refused", attempts=refused)
    decide_call(learning, "late", attempts=(Attempt(Command.TRANSFER, Result.LATE, started=False),))
    decide_call(learning, "ambiguous", attempts=(Attempt(Command.TRANSFER, Result.AMBIGUOUS),))
    decide_call(learning, "waited", attempts=())
    assert len(learning) == 0
    for call_id in ("refused", "late", "ambiguous", "waited"):
        assert talk(learning, 60.0, call_id=call_id) is None
    assert store.taught == []


def test_an_excluded_manager_is_never_learned() -> None:
    """The reception desk takes many calls; learn.exclude keeps it from owning anyone."""
    learning, store, _ = tracker()
    decide_call(learning, attempts=RELEASED)
    assert talk(learning, 60.0, workplace="105") is None
    assert store.taught == []


def test_a_shared_workplace_teaches_only_the_manager_we_sent_the_call_to() -> None:
    """desk1 and desk2 share a workplace: a transfer to desk2 answered there teaches desk2; the
    PBX ringing that workplace after a release tells nobody apart: nothing learned. A workplace
    no manager has teaches nothing either."""
    learning, store, _ = tracker()
    sent = (Attempt(Command.TRANSFER, Result.APPLIED, "desk2", SHARED_WP, answered=True),)
    decide_call(learning, "sent", attempts=sent)
    assert talk(learning, 20.0, call_id="sent", workplace=SHARED_WP) is not None
    decide_call(learning, "released", attempts=RELEASED)
    assert talk(learning, 20.0, call_id="released", workplace=SHARED_WP) is None
    decide_call(learning, "stranger", attempts=RELEASED)
    assert talk(learning, 20.0, call_id="stranger", workplace="999") is None
    assert [manager for _, manager, _ in store.taught] == ["desk2"]


def test_without_learn_in_the_rules_nothing_is_followed_or_learned() -> None:
    """No ``learn``: calls are not followed; ``learn`` removed by a reload before the call ends:
    the call teaches nothing."""
    plain = dataclasses.replace(RULES, learn=None)
    learning, store, view = tracker(plain)
    decide_call(learning, rules=plain)
    assert len(learning) == 0
    view.rules = RULES
    decide_call(learning, "c2")
    view.rules = plain
    assert talk(learning, 60.0, call_id="c2") is None
    assert store.taught == []


def test_a_tracker_without_a_store_follows_nothing() -> None:
    """What the engine holds when the daemon gave it no store (tests' engines)."""
    learning = LearningTracker()
    decide_call(learning)
    assert (len(learning), learning.bound().size) == (0, 0)


def test_followed_calls_are_bounded_by_count_and_by_time() -> None:
    """At most max_calls (the oldest out first); a call with no finished leaves after ttl_s."""
    clock = Clock()
    learning, store, _ = tracker(max_calls=3, ttl_s=60.0, clock=clock)
    for i in range(5):
        decide_call(learning, f"c{i}")
    assert learning.bound() == (3, 3)
    assert talk(learning, 20.0, call_id="c0") is None  # pushed out
    assert talk(learning, 20.0, call_id="c4") is not None
    clock.now += 61.0
    decide_call(learning, "fresh")
    assert learning.bound() == (1, 3)  # c2 and c3 expired
    assert [number for number, _, _ in store.taught] == [CALLER]


# -- the source ------------------------------------------------------------------------------


def stored(manager: str | None, caller: str = CALLER) -> dict[Read, str | None]:
    return {Read(LEARNED_SPACE, caller): manager}


def context(manager: str | None, caller: str = CALLER) -> CallerContext:
    return CallerContext.of(caller, now=NOW, stored=stored(manager, caller))


def test_the_learned_source_reads_the_callers_entry() -> None:
    assert reads_for(CALLER, (LearnedSource(),)) == (Read(LEARNED_SPACE, CALLER),)
    assert DEFAULT_SOURCES["learned"].kind is MatchKind.LEARNED


def test_a_learned_manager_routes_the_call_before_the_fallback() -> None:
    decision = decide(context("petrova"), RULES)
    assert (decision.matched, decision.target and decision.target.manager) == (
        MatchKind.LEARNED,
        "petrova",
    )
    assert decision.own == "petrova"
    assert f"caller {CALLER} talked to petrova before (learned)" in decision.reasons


def test_clients_come_before_learned_unless_order_says_otherwise() -> None:
    """A listed client learned with someone else still goes to his own manager by default;
    ``order: [learned, clients]`` lets the lesson win."""
    client = "79219462761"
    by_default = decide(context("petrova", client), RULES)
    assert (by_default.matched, by_default.own) == (MatchKind.CLIENT, "ivanov")
    learned_first = dataclasses.replace(RULES, order=("learned", "clients", "prefixes"))
    assert in_order(learned_first, DEFAULT_SOURCES)[0] is DEFAULT_SOURCES["learned"]
    turned = decide(context("petrova", client), learned_first)
    assert (turned.matched, turned.own) == (MatchKind.LEARNED, "petrova")


def test_a_learned_manager_the_rules_do_not_know_or_exclude_is_ignored() -> None:
    """Removed from the rules, or added to learn.exclude since: skipped with a reason."""
    gone = decide(context("ghost"), RULES)
    assert (gone.matched, gone.own) == (MatchKind.FALLBACK, None)
    assert f"learned manager 'ghost' for {CALLER} is unknown: ignored" in gone.reasons
    excluded = dataclasses.replace(RULES, learn=Learn(10, 30, frozenset({"petrova"})))
    skipped = decide(context("petrova"), excluded)
    assert skipped.own is None
    assert "learned manager petrova is in learn.exclude: ignored" in skipped.reasons


def test_without_learn_a_learned_entry_is_not_used() -> None:
    plain = dataclasses.replace(RULES, learn=None)
    decision = decide(context("petrova"), plain)
    assert (decision.matched, decision.own) == (MatchKind.FALLBACK, None)
