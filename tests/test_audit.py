"""The call-model audit: what it calls a surprise, how it logs and how it stays bounded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from router.audit import CallAudit, Surprise, sequence_surprise
from router.events import CallEvent, CallRef, CallState, CallType, Party
from router.metrics import Metrics
from tests.mtt_support import json_logs

NUMBER = "74996497803"
IVANOV = "883140777716581"
CLIENT = "79219462761"
S = CallState


@dataclass
class Pbx:
    """A directory that knows ivanov's workplace."""

    workplace_ids: frozenset[str] | None = frozenset({IVANOV})
    terminal_workplaces: Mapping[str, str] = field(default_factory=dict)
    park_named: frozenset[str] = frozenset()


def note(
    state: CallState,
    call_id: str = "c1",
    *,
    kind: CallType = CallType.INCOMING,
    forwarders: tuple[str, ...] = (),
) -> CallEvent:
    """An incoming notification of ``call_id`` in ``state``."""
    callee = Party(id=IVANOV, account_id=IVANOV, forwarders=forwarders)
    return CallEvent(CallRef(call_id, "t"), state, kind, Party(id=CLIENT), callee, raw_state=state)


def counts(metrics: Metrics) -> dict[str, float]:
    """``callmodel_surprises_total`` by kind, the kinds counted only."""
    found = {}
    for kind in Surprise:
        value = metrics.registry.get_sample_value(
            "mtt_router_callmodel_surprises_total", {"kind": kind.value}
        )
        if value:
            found[kind.value] = value
    return found


def play(audit: CallAudit, *states: CallState, call_id: str = "c1", at: float = 0.0) -> None:
    """Feed ``states`` of one call, each at a workplace the directory knows."""
    for state in states:
        audit.observe(note(state, call_id), at, IVANOV)


@pytest.mark.parametrize(
    "states",
    [
        (S.TRYING, S.SHOWING, S.CONNECTED, S.FINISHED, S.RECORDED),
        (S.TRYING, S.SHOWING, S.HIDING, S.SHOWING, S.CONNECTED, S.FINISHED),
        (S.TRYING, S.SHOWING, S.HIDING, S.FINISHED),
        (S.TRYING, S.FINISHED),
        (S.TRYING, S.SHOWING, S.CONNECTED, S.HIDING, S.SHOWING),
    ],
    ids=["answered", "second-workplace", "nobody", "hung-up-parked", "transferred-on"],
)
def test_what_the_model_expects_is_no_surprise(states: tuple[CallState, ...]) -> None:
    """Sequences the model's flows produce count nothing."""
    metrics = Metrics()
    play(CallAudit(metrics, Pbx()), *states)
    assert counts(metrics) == {}


@pytest.mark.parametrize(
    ("previous", "state", "kind"),
    [
        (None, S.SHOWING, Surprise.NO_TRYING),
        (S.SHOWING, S.TRYING, Surprise.SECOND_TRYING),
        (S.TRYING, S.TRYING, Surprise.SECOND_TRYING),
        (S.TRYING, S.CONNECTED, Surprise.CONNECTED_WITHOUT_SHOWING),
        (S.HIDING, S.CONNECTED, Surprise.CONNECTED_WITHOUT_SHOWING),
        (S.FINISHED, S.SHOWING, Surprise.AFTER_FINISHED),
        (S.RECORDED, S.RECORDED, Surprise.AFTER_FINISHED),
        (S.CONNECTED, S.RECORDED, Surprise.RECORDED_BEFORE_FINISHED),
        (S.TRYING, S.HIDING, Surprise.OUT_OF_ORDER),
        (S.SHOWING, S.UNKNOWN, Surprise.UNKNOWN_STATE),
    ],
)
def test_sequence_surprises(previous: CallState | None, state: CallState, kind: Surprise) -> None:
    """Each unexpected order has its kind."""
    assert sequence_surprise(previous, state) is kind


def test_surprises_are_counted_by_kind() -> None:
    """A second trying, a connected with no showing and a state after finished, counted."""
    metrics = Metrics()
    audit = CallAudit(metrics, Pbx())
    play(audit, S.TRYING, S.TRYING, S.CONNECTED, S.FINISHED, S.RECORDED, S.HIDING)
    play(audit, S.CONNECTED, call_id="c2")
    assert counts(metrics) == {
        "second_trying": 1,
        "connected_without_showing": 1,
        "after_finished": 1,
        "no_trying": 1,
    }


def test_a_leg_at_a_workplace_nobody_listed() -> None:
    """Unknown workplace: counted once the directory knows its workplaces; a forwarded leg, or
    a directory not loaded yet, is no surprise."""
    metrics = Metrics()
    audit = CallAudit(metrics, Pbx())
    audit.observe(note(S.TRYING), 0.0)
    audit.observe(note(S.SHOWING), 0.0, None)
    audit.observe(note(S.SHOWING, "c2", forwarders=("89219462761",)), 0.0, None)
    CallAudit(metrics, Pbx(workplace_ids=None)).observe(note(S.SHOWING, "c3"), 0.0, None)
    CallAudit(metrics).observe(note(S.SHOWING, "c4"), 0.0, None)  # no directory at all
    assert counts(metrics)["unknown_workplace"] == 1


def test_a_leg_without_a_type() -> None:
    """Only recorded comes without a type."""
    metrics = Metrics()
    audit = CallAudit(metrics)
    audit.observe(note(S.TRYING, kind=CallType.UNKNOWN), 0.0)
    play(audit, S.SHOWING, S.CONNECTED, S.FINISHED)
    audit.observe(note(S.RECORDED, kind=CallType.UNKNOWN), 0.0)
    assert counts(metrics) == {"unknown_type": 1}


def test_one_line_a_second_per_kind_with_the_count_held_back() -> None:
    """Three surprises of a kind within a second: one line; the next second's line says 2."""
    metrics = Metrics()
    audit = CallAudit(metrics)
    with json_logs() as logs:
        for i, at in enumerate((10.0, 10.2, 10.9, 11.0)):
            audit.observe(note(S.CONNECTED, f"c{i}"), at, IVANOV)
        audit.observe(note(S.TRYING, "c0"), 10.5)  # another kind has its own second
    lines = [json.loads(x) for x in logs.getvalue().splitlines()]
    assert [(x["kind"], x["held_back"]) for x in lines] == [
        ("no_trying", 0),
        ("no_trying", 2),
        ("second_trying", 0),
    ]
    first = lines[0]
    assert (first["event"], first["level"], first["call_id"], first["state"]) == (
        "callmodel_surprise",
        "warning",
        "c0",
        "connected",
    )
    assert first["caller"] == CLIENT
    assert first["notification"]["pbx_side"]["id"] == IVANOV
    assert counts(metrics)["no_trying"] == 4


def test_tracking_is_bounded_by_count_and_time() -> None:
    """The oldest call goes first when full, and every call older than the TTL goes."""
    audit = CallAudit(Metrics(), max_calls=3, ttl_s=100.0)
    for i in range(5):
        audit.observe(note(S.TRYING, f"c{i}"), float(i))
    assert len(audit) == 3
    audit.observe(note(S.SHOWING, "c0"), 5.0, IVANOV)  # forgotten: a call with no trying
    assert len(audit) == 3
    audit.observe(note(S.TRYING, "late"), 150.0)  # everything first seen before 50 s expires
    assert len(audit) == 1


def test_a_call_id_too_long_to_track() -> None:
    """Reported, never stored."""
    metrics = Metrics()
    audit = CallAudit(metrics)
    audit.observe(note(S.TRYING, "x" * 1000), 0.0)
    assert (len(audit), counts(metrics)) == (0, {"long_call_id": 1})
