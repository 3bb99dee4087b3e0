"""The routing decision (router.routing.decide): order, availability, reasons."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import pytest

from router.context import CallerContext, Read
from router.routing import Action, Decision, MatchKind, Target, decide
from router.rules import Rules, load_rules
from router.sources import CLIENTS_SPACE

RULES_YAML = """\
version: 1
timezone: Europe/Moscow
managers:
  ivanov:   {workplace: "101", schedule: office}
  petrova:  {workplace: "102"}
  spb:      {workplace: "103"}
  fallback1: {workplace: "201", schedule: office}
  fallback2: {workplace: "202"}
  twin:     {workplace: "102"}
schedules:
  office:
    mon-fri: "09:00-18:00"
    except: ["2027-01-01"]
clients:
  "+7 921 946-27-61": ivanov
  "+7 911 000-00-01": petrova
  "+7 911 000-00-02": twin
prefixes:
  "+7812": petrova
  "+781242": spb
fallback:
  managers: [fallback1, fallback2]
  otherwise: pbx
"""

IVANOV_CLIENT = "89219462761"
SPB_CALLER = "+7 (812) 424-15-00"  # matches +781242 (spb) and +7812 (petrova)
UNKNOWN = "+7 495 000-00-00"
WORKDAY = datetime(2027, 1, 11, 7, 0, tzinfo=UTC)  # Monday 10:00 MSK
EVENING = datetime(2027, 1, 11, 17, 0, tzinfo=UTC)  # Monday 20:00 MSK


@pytest.fixture(scope="module")
def rules() -> Rules:
    """The rules of this module."""
    return load_rules(RULES_YAML)


def decide_for(
    caller: str | None,
    rules: Rules,
    *,
    now: datetime,
    busy: Collection[str] = (),
    known_workplaces: Collection[str] | None = None,
    client_manager: str | None = None,
) -> Decision:
    """``decide`` for a raw caller, with ``client_manager`` as the client map's answer."""
    context = CallerContext.of(
        caller,
        now=now,
        busy=frozenset(busy),
        known_workplaces=None if known_workplaces is None else frozenset(known_workplaces),
    )
    if context.caller is not None and client_manager is not None:
        context = context._replace(stored={Read(CLIENTS_SPACE, context.caller): client_manager})
    return decide(context, rules)


def managers(decision: Decision) -> list[str]:
    """The manager ids of the targets, in order."""
    return [t.manager for t in decision.targets]


def test_client_comes_first(rules: Rules) -> None:
    """A known client goes to their personal manager, then fallbacks follow as spare targets."""
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY)
    assert decision.action is Action.TRANSFER
    assert decision.matched is MatchKind.CLIENT
    assert decision.target == Target("ivanov", "101", MatchKind.CLIENT)
    assert managers(decision) == ["ivanov", "fallback1", "fallback2"]
    assert decision.caller == "79219462761"
    assert decision.reasons == (
        "caller 79219462761 is client of ivanov",
        "ivanov is available",
        "fallback fallback1 is available",
        "fallback fallback2 is available",
        "transfer to ivanov 101",
    )


def test_client_beats_prefix() -> None:
    """A client whose number also matches a prefix goes to the client's manager first."""
    client_rules = load_rules(
        RULES_YAML.replace('"+7 911 000-00-01": petrova', '"+78124241500": ivanov')
    )
    decision = decide_for(SPB_CALLER, client_rules, now=WORKDAY)
    assert managers(decision)[:2] == ["ivanov", "spb"]
    assert decision.matched is MatchKind.CLIENT


def test_longest_prefix_wins(rules: Rules) -> None:
    """Of +7812 and +781242 the longer prefix decides; the shorter one is not a candidate."""
    decision = decide_for(SPB_CALLER, rules, now=WORKDAY)
    assert decision.target == Target("spb", "103", MatchKind.PREFIX)
    assert managers(decision) == ["spb", "fallback1", "fallback2"]
    assert "caller 78124241500 matches prefix 781242: spb" in decision.reasons


def test_shorter_prefix_when_longer_does_not_match(rules: Rules) -> None:
    """A caller matching only +7812 goes to that prefix's manager."""
    decision = decide_for("+7 812 999-99-99", rules, now=WORKDAY)
    assert decision.target == Target("petrova", "102", MatchKind.PREFIX)


def test_unknown_caller_goes_to_first_available_fallback(rules: Rules) -> None:
    """A caller matching nothing goes to the fallback managers in order."""
    decision = decide_for(UNKNOWN, rules, now=WORKDAY)
    assert decision.matched is MatchKind.FALLBACK
    assert managers(decision) == ["fallback1", "fallback2"]
    assert decision.reasons[0] == "caller 74950000000 is not a listed client"


def test_off_schedule_client_manager_is_skipped_with_reason(rules: Rules) -> None:
    """Off schedule, the personal manager is skipped and the reason names the schedule."""
    decision = decide_for(IVANOV_CLIENT, rules, now=EVENING)
    assert decision.target == Target("fallback2", "202", MatchKind.FALLBACK)
    assert decision.reasons == (
        "caller 79219462761 is client of ivanov",
        "ivanov is off schedule (office: mon-fri 09:00-18:00)",
        "fallback fallback1 is off schedule (office: mon-fri 09:00-18:00)",
        "fallback fallback2 is available",
        "transfer to fallback2 202",
    )


def test_except_date_is_named_in_reason(rules: Rules) -> None:
    """On an except date the reason says the day is off."""
    decision = decide_for(IVANOV_CLIENT, rules, now=datetime(2027, 1, 1, 7, 0, tzinfo=UTC))
    assert "ivanov is off schedule (office: 2027-01-01 is a day off)" in decision.reasons


def test_busy_manager_is_skipped_with_reason(rules: Rules) -> None:
    """A manager whose workplace is on a call is skipped."""
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY, busy={"101"})
    assert decision.target == Target("fallback1", "201", MatchKind.FALLBACK)
    assert "ivanov is busy (workplace 101 is on a call)" in decision.reasons


def test_workplace_not_listed_by_mtt_is_skipped(rules: Rules) -> None:
    """With a known workplace list, managers at other workplaces are skipped."""
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY, known_workplaces={"201", "202"})
    assert managers(decision) == ["fallback1", "fallback2"]
    assert "ivanov has workplace 101, not listed by MTT" in decision.reasons


def test_unknown_workplace_list_means_no_check(rules: Rules) -> None:
    """known_workplaces=None (list not fetched yet) skips nobody; an empty list skips everyone."""
    assert decide_for(IVANOV_CLIENT, rules, now=WORKDAY, known_workplaces=None).target is not None
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY, known_workplaces=())
    assert decision.action is Action.TERMINATE


def test_client_manager_override_takes_precedence(rules: Rules) -> None:
    """The per-client store's manager replaces the one in rules.clients."""
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY, client_manager="spb")
    assert decision.target == Target("spb", "103", MatchKind.CLIENT)
    assert decision.reasons[0] == "caller 79219462761 is client of spb (client store)"
    assert "ivanov" not in managers(decision)


def test_client_manager_override_for_unlisted_caller(rules: Rules) -> None:
    """The store can make any caller a client, ahead of the prefix."""
    decision = decide_for(SPB_CALLER, rules, now=WORKDAY, client_manager="fallback2")
    assert managers(decision) == ["fallback2", "spb", "fallback1"]
    assert decision.matched is MatchKind.CLIENT


def test_unknown_client_manager_override_is_ignored(rules: Rules) -> None:
    """A store entry naming a manager the rules lack is ignored, with a reason."""
    decision = decide_for(IVANOV_CLIENT, rules, now=WORKDAY, client_manager="ghost")
    assert decision.target == Target("ivanov", "101", MatchKind.CLIENT)
    assert (
        decision.reasons[0] == "client store names unknown manager 'ghost' for 79219462761: ignored"
    )


def test_same_workplace_is_not_listed_twice(rules: Rules) -> None:
    """Two managers at one workplace give one target; the reason says why."""
    shared = load_rules(RULES_YAML.replace("managers: [fallback1, fallback2]", "managers: [twin]"))
    decision = decide_for("+7 911 000-00-01", shared, now=WORKDAY)
    assert managers(decision) == ["petrova"]
    assert "fallback twin shares workplace 102 with petrova" in decision.reasons


def test_manager_considered_once(rules: Rules) -> None:
    """A client's manager who is also a fallback is judged once."""
    again = load_rules(RULES_YAML.replace("managers: [fallback1, fallback2]", "managers: [ivanov]"))
    decision = decide_for(IVANOV_CLIENT, again, now=EVENING)
    assert decision.reasons == (
        "caller 79219462761 is client of ivanov",
        "ivanov is off schedule (office: mon-fri 09:00-18:00)",
        "no manager available: terminate (otherwise: pbx), the PBX routes it now",
    )


def test_nobody_available_terminates_with_otherwise_pbx(rules: Rules) -> None:
    """With no target and otherwise: pbx, the call is released to the PBX at once."""
    decision = decide_for(UNKNOWN, rules, now=EVENING, busy={"202"})
    assert decision.action is Action.TERMINATE
    assert decision.targets == ()
    assert decision.matched is MatchKind.NONE
    assert decision.reasons[-1].startswith("no manager available: terminate")


def test_nobody_available_waits_with_otherwise_wait() -> None:
    """With no target and otherwise: wait, nothing is sent."""
    waiting = load_rules(RULES_YAML.replace("otherwise: pbx", "otherwise: wait"))
    decision = decide_for(UNKNOWN, waiting, now=EVENING, busy={"202"})
    assert decision.action is Action.WAIT
    assert decision.matched is MatchKind.NONE
    assert decision.reasons[-1].startswith("no manager available: wait")


@pytest.mark.parametrize("caller", [None, "", "anonymous", "+"])
def test_unreadable_caller_is_an_unknown_caller(rules: Rules, caller: str | None) -> None:
    """A missing or unreadable caller skips client and prefix and goes to the fallbacks."""
    decision = decide_for(caller, rules, now=WORKDAY)
    assert decision.caller is None
    assert decision.matched is MatchKind.FALLBACK
    assert decision.reasons[0].startswith("caller number is ")
    assert decision.reasons[0].endswith("treated as an unknown caller")


def test_caller_in_mtt_format(rules: Rules) -> None:
    """MTT's own formats (7..., @pstn) match rules written by people."""
    assert decide_for("79219462761@pstn", rules, now=WORKDAY).matched is MatchKind.CLIENT


def test_naive_now_is_rules_local_time(rules: Rules) -> None:
    """A naive datetime is read in the rules timezone."""
    assert decide_for(IVANOV_CLIENT, rules, now=datetime(2027, 1, 11, 10, 0)).target is not None
    evening = decide_for(IVANOV_CLIENT, rules, now=datetime(2027, 1, 11, 20, 0))
    assert evening.matched is MatchKind.FALLBACK


def test_rules_built_in_code_with_dangling_reference() -> None:
    """Rules built without the loader may name a missing manager: it is skipped, not a crash."""
    bare = Rules(version=1, timezone=load_rules(RULES_YAML).timezone, managers={}, fallback=("x",))
    decision = decide_for(UNKNOWN, bare, now=WORKDAY)
    assert decision.action is Action.TERMINATE
    assert "fallback x is not a known manager" in decision.reasons


def test_decision_as_json(rules: Rules) -> None:
    """to_json gives plain JSON types for explain --json and logs."""
    data = decide_for(SPB_CALLER, rules, now=WORKDAY, busy=["103"]).to_json()
    assert data["action"] == "transfer"
    assert data["matched"] == "fallback"
    assert data["caller"] == "78124241500"
    assert data["targets"][0] == {"manager": "fallback1", "workplace": "201", "via": "fallback"}
    assert data["reasons"][-1] == "transfer to fallback1 201"
