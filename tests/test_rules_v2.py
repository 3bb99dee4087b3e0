"""Rules format version 2: the keys read with line numbers, and what they change in a decision
(deputy, absence, the country's calendar, extra workdays, a line's own fallback, the first
source deciding whose a caller is), plus the hit rate's "deputy"."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from router.answers import AnswerTracker
from router.cli import main
from router.context import CallerContext
from router.errors import RulesError
from router.events import CallState
from router.metrics import Metrics
from router.routing import Action, Decision, MatchKind, decide
from router.rules import Rules, load_rules, load_rules_file
from router.rules import calendar as calendar_module

V2 = """\
version: 2
timezone: Europe/Moscow
calendar: RU
workdays: ["2027-03-07"]
managers:
  ivanov:
    workplace: "101"
    schedule: office
    deputy: petrova
    absent:
      - {from: "2027-06-01", to: "2027-06-10"}
  petrova: {workplace: "102", schedule: office}
  support1: {workplace: "301"}
  sidorov: {workplace: "201"}
schedules:
  office:
    mon-fri: "09:00-18:00"
clients:
  "+7 921 946-27-61": ivanov
prefixes:
  "+7921": sidorov
learn: {min_talk_s: 15, ttl_days: 30, exclude: [support1]}
lookup:
  url: "https://crm.example.ru/m?caller={caller}&line={callee}"
  headers: {Authorization: "Bearer ${CRM_TOKEN}"}
  timeout_ms: 500
  cache_s: 60
order: [clients, learned, prefixes]
no_answer: {after_s: 15, max_hops: 1}
lines:
  "8 (495) 111-22-33":
    fallback: {managers: [support1], otherwise: wait}
fallback:
  managers: [sidorov]
  otherwise: pbx
"""

CLIENT = "+79219462761"
MONDAY = datetime(2027, 1, 11, 7, 0, tzinfo=UTC)  # Monday 10:00 MSK, a working day


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> Rules:
    """The version-2 rules of this module (the CRM token from the environment)."""
    monkeypatch.setenv("CRM_TOKEN", "s3cret")
    return load_rules(V2, today=date(2027, 1, 1))


def decide_at(
    rules: Rules, now: datetime, *, busy: Collection[str] = (), callee: str | None = None
) -> Decision:
    """The decision for CLIENT calling ``callee`` at ``now``."""
    context = CallerContext.of(CLIENT, now=now, callee=callee, busy=frozenset(busy))
    return decide(context, rules)


def test_every_version2_key_is_read(rules: Rules) -> None:
    """What the file says is what the rules hold."""
    ivanov = rules.managers["ivanov"]
    assert (rules.version, ivanov.deputy, ivanov.absent) == (
        2,
        "petrova",
        ((date(2027, 6, 1), date(2027, 6, 10)),),
    )
    assert rules.learn is not None
    assert (rules.learn.min_talk_s, rules.learn.ttl_days, rules.learn.exclude) == (
        15.0,
        30.0,
        frozenset({"support1"}),
    )
    assert rules.lookup is not None
    assert rules.lookup.headers == {"Authorization": "Bearer s3cret"}
    assert (rules.lookup.timeout_ms, rules.lookup.cache_s) == (500, 60.0)
    assert rules.order == ("clients", "learned", "prefixes")
    assert rules.no_answer is not None
    assert (rules.no_answer.after_s, rules.no_answer.max_hops) == (15.0, 1)
    assert rules.fallback_for("74951112233")[:2] == (("support1",), rules.otherwise.WAIT)
    assert rules.fallback_for("70000000000")[:2] == (("sidorov",), rules.otherwise.PBX)
    assert rules.calendar is not None
    assert rules.calendar.country == "RU"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("version: 2", "version: 1"),
            "r.yaml:3: calendar needs version: 2 (this file says version: 1)",
        ),
        (("deputy: petrova", "deputy: nobody"), 'manager ivanov: deputy: unknown manager "nobody"'),
        (("deputy: petrova", "deputy: ivanov"), "manager ivanov: deputy cannot be ivanov himself"),
        (("calendar: RU", "calendar: XX"), 'unknown calendar "XX"'),
        (('to: "2027-06-10"', 'to: "2027-05-14"'), "2027-05-14 is before 2027-06-01"),
        (
            ('\n      - {from: "2027-06-01"', ' {from: "2027-06-01"'),
            "manager ivanov: absent must be a list of {from: YYYY-MM-DD, to: YYYY-MM-DD}",
        ),
        (("${CRM_TOKEN}", "${NO_SUCH_VAR_HERE}"), "NO_SUCH_VAR_HERE is not set"),
        (("&line={callee}", "&line={line}"), "unknown placeholder {line}"),
        (("order: [clients,", "order: [clients, clients,"), '"clients" is listed twice'),
        (("order: [clients,", "order: [crm,"), 'order: unknown source "crm"'),
        (("max_hops: 1", "max_hops: 1.5"), "no_answer.max_hops must be a whole number"),
        (("managers: [support1]", "managers: [ghost]"), 'unknown manager "ghost"'),
    ],
)
def test_version2_problems_name_their_line(
    monkeypatch: pytest.MonkeyPatch, edit: tuple[str, str], expected: str
) -> None:
    """Each mistake is refused with the file, its line and what to do."""
    monkeypatch.setenv("CRM_TOKEN", "s3cret")
    with pytest.raises(RulesError) as info:
        load_rules(V2.replace(*edit), "r.yaml", today=date(2027, 1, 1))
    assert any(expected in line for line in info.value.lines()), info.value.lines()
    assert all(line.startswith("r.yaml:") for line in info.value.lines())


def test_a_version1_file_is_read_as_before() -> None:
    """Version 1 stays valid; its prefix still counts after an unavailable client's manager."""
    v1 = load_rules(
        "version: 1\ntimezone: UTC\nmanagers:\n  a: {workplace: '1'}\n  b: {workplace: '2'}\n"
        "clients: {'+79219462761': a}\nprefixes: {'+7921': b}\n"
    )
    decision = decide(CallerContext.of(CLIENT, now=MONDAY, busy=frozenset({"1"})), v1)
    assert [t.manager for t in decision.targets] == ["b"]


def test_the_first_source_decides_whose_the_caller_is(rules: Rules) -> None:
    """Version 2: the client's manager unavailable, his deputy next; the prefix is not asked."""
    decision = decide_at(rules, MONDAY, busy={"101"})
    assert [(t.manager, t.via) for t in decision.targets] == [
        ("petrova", MatchKind.DEPUTY),
        ("sidorov", MatchKind.FALLBACK),
    ]
    assert "ivanov is busy (workplace 101 is on a call)" in decision.reasons
    assert "deputy petrova is available" in decision.reasons
    assert (decision.own, decision.deputy) == ("ivanov", "petrova")


def test_an_absent_manager_hands_over_to_his_deputy(rules: Rules) -> None:
    """Within the absence (inclusive) the deputy; the day after, the manager again."""
    decision = decide_at(rules, datetime(2027, 6, 10, 7, 0, tzinfo=UTC))
    assert decision.target is not None
    assert decision.target.manager == "petrova"
    assert "ivanov is absent (2027-06-01 to 2027-06-10)" in decision.reasons
    back = decide_at(rules, datetime(2027, 6, 11, 7, 0, tzinfo=UTC))
    assert back.target is not None
    assert back.target.manager == "ivanov"


def test_new_year_holidays_are_days_off(rules: Rules) -> None:
    """5 January 2027 (a Tuesday) is an official day off in Russia: the office is closed."""
    decision = decide_at(rules, datetime(2027, 1, 5, 7, 0, tzinfo=UTC))
    assert decision.target is not None
    assert decision.target.manager == "sidorov"  # no schedule: always available
    assert any(
        r.startswith("ivanov is off: 2027-01-05 is a day off (RU: New Year")
        for r in decision.reasons
    )


def test_a_transferred_working_saturday_has_the_weekday_hours(rules: Rules) -> None:
    """20 February 2027 is a Saturday worked by decree: mon-fri hours apply."""
    at = datetime(2027, 2, 20, 7, 0, tzinfo=UTC)  # 10:00 MSK
    decision = decide_at(rules, at)
    assert decision.target is not None
    assert decision.target.manager == "ivanov"
    # The bridge day it paid for (Monday 22 February) is off.
    off = decide_at(rules, datetime(2027, 2, 22, 7, 0, tzinfo=UTC))
    assert off.target is not None
    assert off.target.manager == "sidorov"


def test_extra_workdays_have_the_weekday_hours(rules: Rules) -> None:
    """``workdays``: Sunday 7 March 2027 is worked; Sunday 14 March is not."""
    assert decide_at(rules, datetime(2027, 3, 7, 7, 0, tzinfo=UTC)).targets[0].manager == "ivanov"
    assert decide_at(rules, datetime(2027, 3, 14, 7, 0, tzinfo=UTC)).targets[0].manager == "sidorov"


def test_a_line_has_its_own_fallback(rules: Rules) -> None:
    """A call to the support line: its fallback and its otherwise, not the top-level ones."""
    evening = datetime(2027, 1, 11, 17, 0, tzinfo=UTC)  # 20:00 MSK: the office is closed
    decision = decide_at(rules, evening, callee="+7 495 111 22 33", busy={"301"})
    assert decision.action is Action.WAIT
    assert "line 74951112233 has its own fallback" in decision.reasons
    assert decision.fallback == ("support1",)
    other = decide_at(rules, evening, callee="74950000000")
    assert [t.manager for t in other.targets] == ["sidorov"]


def test_clients_file_is_merged_and_its_errors_name_its_lines(tmp_path: Path) -> None:
    """The CSV next to the rules adds clients; its bad rows are refused as CSV:LINE: message."""
    (tmp_path / "clients.csv").write_text(
        "number,manager\n+7 911 000-00-01,petrova\n79110000002,ivanov\n", encoding="utf-8"
    )
    text = (
        "version: 2\ntimezone: UTC\nmanagers:\n  ivanov: {workplace: '1'}\n"
        "  petrova: {workplace: '2'}\nclients_file: clients.csv\n"
        "clients: {'+79219462761': ivanov}\n"
    )
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules_file(path)
    assert dict(rules.clients) == {
        "79219462761": "ivanov",
        "79110000001": "petrova",
        "79110000002": "ivanov",
    }
    assert rules.clients_file == str(tmp_path / "clients.csv")
    (tmp_path / "clients.csv").write_text("79110000001,petrova\n79110000003,ghost\n")
    with pytest.raises(RulesError) as info:
        load_rules_file(path)
    assert info.value.lines() == [f"{tmp_path / 'clients.csv'}:2: unknown manager 'ghost'"]
    (tmp_path / "clients.csv").write_text("79219462761,petrova\n")
    with pytest.raises(RulesError, match="also in clients"):
        load_rules_file(path)


def test_the_deputy_answering_counts_as_deputy(rules: Rules) -> None:
    """The hit rate's roles: own manager personal, his deputy deputy, the fallback fallback."""
    metrics = Metrics()
    answers = AnswerTracker(metrics)
    decision = decide_at(rules, MONDAY, busy={"101"})
    answers.decided("c1", rules, decision)
    answers.observe("c1", CallState.CONNECTED, "102")
    value = metrics.registry.get_sample_value("mtt_router_answered_total", {"by": "deputy"})
    assert value == 1


def test_rules_check_warns_when_the_calendar_lacks_next_year(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A calendar without next year's transferred days is valid, with a warning on stderr."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 2\ntimezone: Europe/Moscow\ncalendar: RU\nmanagers:\n  a: {workplace: '1'}\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "warning" not in err  # the installed package knows 2027's decree
    # The same package asked about a year it has no decree for (as next year, some day).
    real = calendar_module.load_calendar
    monkeypatch.setattr(
        calendar_module,
        "load_calendar",
        lambda country, workdays, *, around, years=(): real(country, workdays, around=around + 40),
    )
    assert main(["rules", "check", str(path)]) == 0
    _, err = capsys.readouterr()
    assert f"no transferred days for {date.today().year + 1}" in err
