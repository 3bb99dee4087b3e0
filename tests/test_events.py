"""Every notification example of MTT's document parses into the expected typed values.

The examples are copied verbatim into ``tests/data/doc_notifications.json`` (one example of the
document is cut off and skipped; the file says which). The same payloads are then POSTed to a
running daemon, which must accept each with 200.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router import callmodel
from router.errors import EventShapeError
from router.events import (
    CallEvent,
    CallRef,
    CallState,
    CallType,
    Event,
    Party,
    VpbxEvent,
    VpbxEventType,
    parse_event,
)
from router.numbers import try_normalize
from router.simulator import SimConfig
from tests.fixtures.daemon import NUMBER, OTHER_NUMBER, RunningDaemon, daemon_sim_config

DOC = json.loads(
    (Path(__file__).parent / "data" / "doc_notifications.json").read_text(encoding="utf-8")
)
EXAMPLES: dict[str, Any] = {e["name"]: e["payload"] for e in DOC["examples"]}

OUT_CALL = "SDfe2n901-b510751695c9e53584301f0c0e8d98c9200@127.0.0.1"
OUT_TAG = "sdfe2n901-281028329"
OUT_CALLER = Party(
    id="78005560251", account_id="883140582526566", centrex_id="48212857", display_id="78005560251"
)

EXPECTED: dict[str, Event] = {
    "numbers_changed": VpbxEvent(VpbxEventType.NUMBERS_CHANGED, "numbersChanged"),
    "workplaces_changed": VpbxEvent(VpbxEventType.WORKPLACES_CHANGED, "workplacesChanged"),
    "trying_incoming": CallEvent(
        call=CallRef(
            "c166e238a4c211ea9d373863bb43daf8_00015ED635780FC7~1o", "hswdfry52vmykfla____.o"
        ),
        state=CallState.TRYING,
        type=CallType.INCOMING,
        caller=Party(id="78124241500", account_id="78124241500@pstn", display_id="78124241500"),
        callee=Party(
            id="74996497803",
            account_id="74996497803",
            centrex_id="67821426",
            display_id="74996497803",
            display_name="",
        ),
        transport_id="10.133.33.136:5073",
        start_time="2020-06-02 11:18:16",
        raw_state="trying",
    ),
    "trying_outgoing": CallEvent(
        call=CallRef(OUT_CALL, OUT_TAG),
        state=CallState.TRYING,
        type=CallType.OUTGOING,
        caller=OUT_CALLER,
        callee=Party(id="+79219462761", display_id="+79219462761"),
        transport_id="10.133.51.137:5070",
        start_time="2020-06-24 15:01:45",
        raw_state="trying",
    ),
    "recorded": CallEvent(
        call=CallRef("SDvapac01-3bd7d743109f2668f16de50c9ab53559100@127.0.0.1", None),
        state=CallState.RECORDED,
        type=CallType.UNKNOWN,
        caller=Party(),
        callee=Party(),
        url_record="https://<serverhost>/<path>/<filename>.mp3",
        account_id="883140777446532",
        raw_state="recorded",
    ),
    "showing_outgoing": CallEvent(
        call=CallRef(OUT_CALL, OUT_TAG),
        state=CallState.SHOWING,
        type=CallType.OUTGOING,
        caller=OUT_CALLER,
        callee=Party(id="+79219462761", display_id="+79219462761"),
        transport_id="10.133.51.137:5070",
        start_time="2020-06-24 15:01:45",
        raw_state="showing",
    ),
    "connected_outgoing": CallEvent(
        call=CallRef(OUT_CALL, OUT_TAG),
        state=CallState.CONNECTED,
        type=CallType.OUTGOING,
        caller=OUT_CALLER,
        callee=Party(id="79219462761", display_id="79219462761"),
        transport_id="10.133.51.137:5070",
        start_time="2020-06-24 15:01:55",
        raw_state="connected",
    ),
    "finished_outgoing": CallEvent(
        call=CallRef(OUT_CALL, OUT_TAG),
        state=CallState.FINISHED,
        type=CallType.OUTGOING,
        caller=OUT_CALLER,
        callee=Party(id="79219462761", display_id="79219462761"),
        transport_id="10.133.51.137:5070",
        duration_s=3,
        reason="Originate leg disconnected",
        reason_code=None,
        raw_state="finished",
    ),
}


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


def test_fixture_holds_every_complete_example() -> None:
    """The fixture file holds the eight complete examples of the document, each expected."""
    assert sorted(EXAMPLES) == sorted(EXPECTED)
    assert any("cut off" in note for note in DOC["notes"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_document_example_parses(name: str) -> None:
    """Each example parses into exactly the typed value its fields describe."""
    assert EXPECTED[name] == parse_event(EXAMPLES[name])


def test_incoming_trying_example_is_a_parked_call() -> None:
    """The document's incoming trying is a parked call from a normalisable caller number."""
    event = parse_event(EXAMPLES["trying_incoming"])
    assert isinstance(event, CallEvent)
    assert callmodel.is_parked_trying(event, {NUMBER, OTHER_NUMBER})
    # Numbers unknown: only the numbers routing.park names count, none named: no call does.
    assert not callmodel.is_parked_trying(event, None)
    assert callmodel.is_parked_trying(event, None, frozenset({NUMBER}))
    assert not callmodel.is_parked_trying(event, {OTHER_NUMBER})
    assert try_normalize(event.caller.account_id) == "78124241500"  # "@pstn" suffix dropped


def test_outgoing_examples_name_the_workplace_and_are_never_parked() -> None:
    """makeCall legs: not parked; connected makes the caller's workplace busy, finished frees it."""
    trying, connected, finished = (
        parse_event(EXAMPLES[n])
        for n in ("trying_outgoing", "connected_outgoing", "finished_outgoing")
    )
    assert isinstance(trying, CallEvent)
    assert isinstance(connected, CallEvent)
    assert isinstance(finished, CallEvent)
    assert not callmodel.is_parked_trying(trying, {NUMBER, OTHER_NUMBER})
    assert callmodel.busy_workplace(connected) == "883140582526566"
    assert callmodel.freed_workplace(finished) == "883140582526566"


async def test_daemon_accepts_every_document_example(daemon: RunningDaemon) -> None:
    """POSTed to /events each example gets 200 and is counted under its event and state."""
    for name in sorted(EXAMPLES):
        status, text = await daemon.post_event(EXAMPLES[name])
        assert (name, status, text) == (name, 200, "ok")
    counted = {
        ("callNotifications", "trying"): 2,
        ("callNotifications", "showing"): 1,
        ("callNotifications", "connected"): 1,
        ("callNotifications", "finished"): 1,
        ("callNotifications", "recorded"): 1,
        ("vpbxNotifications", "numbersChanged"): 1,
        ("vpbxNotifications", "workplacesChanged"): 1,
    }
    for (event, state), count in counted.items():
        sample = daemon.sample("mtt_router_notifications_total", event=event, state=state)
        assert (event, state, count) == (event, state, sample)
    assert daemon.sample("mtt_router_rejected_total", reason="bad_request") == 0
    # The incoming trying is a parked call to our number: it gets exactly one decision (the
    # simulator does not know the document's call id, so MTT refuses every command: error).
    await daemon.wait_decisions(1)
    assert daemon.decisions("error") == 1


def test_for_another_account_by_centrex_id() -> None:
    """Refused only when some party carries a centrexId and none carries ours."""

    def event(caller: str | None, callee: str | None) -> CallEvent:
        return CallEvent(
            call=CallRef("c"),
            state=CallState.TRYING,
            type=CallType.INCOMING,
            caller=Party(id="79219462761", centrex_id=caller),
            callee=Party(id="74996497803", centrex_id=callee),
        )

    assert event("1", "2").for_another_account("3")
    assert not event("1", "3").for_another_account("3")
    assert not event(None, "3").for_another_account("3")
    assert not event(None, None).for_another_account("3")
    assert event(None, "2").for_another_account("3")


def _info(**fields: Any) -> dict[str, Any]:
    call_info: dict[str, Any] = {
        "call": {"id": "c-1", "tag": "t"},
        "state": "trying",
        "type": "incoming",
        "caller": {"id": "79219462761"},
        "callee": {"id": "74996497803", "forwarderList": []},
    }
    for key, value in fields.items():
        section, _, name = key.partition("__")
        if name:
            call_info[section] = {**call_info[section], name: value}
        else:
            call_info[section] = value
    return {"event": "callNotifications", "result": {"callInfo": call_info}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"call__id": "x" * 257}, "callInfo.call.id is longer than 256"),
        ({"call__tag": "x" * 257}, "callInfo.call.tag is longer than 256"),
        ({"caller__id": "7" * 257}, "callInfo.caller.id is longer than 256"),
        ({"callee__displayName": "я" * 1025}, "callInfo.callee.displayName is longer than 1024"),
        ({"callee__forwarderList": ["1"] * 33}, "forwarderList has over 32 entries"),
        ({"callee__forwarderList": ["1" * 257]}, "entry over 256 characters"),
        ({"transportId": "x" * 257}, "callInfo.transportId is longer than 256"),
        ({"state": "x" * 257}, "callInfo.state is longer than 256"),
    ],
)
def test_fields_beyond_their_limit_are_refused(fields: dict[str, Any], message: str) -> None:
    """Ids, numbers and names past a sane length are a wrong shape (400), not a map key."""
    with pytest.raises(EventShapeError, match=message):
        parse_event(_info(**fields))


def test_fields_at_their_limit_are_accepted() -> None:
    """Exactly at the limits: parsed."""
    event = parse_event(
        _info(call__id="x" * 256, callee__displayName="я" * 1024, callee__forwarderList=["1"] * 32)
    )
    assert isinstance(event, CallEvent)
    assert (len(event.call.id), len(event.callee.forwarders)) == (256, 32)
