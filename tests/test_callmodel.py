"""The call model as data: the parking rule, the workplace rule, the flow, command classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from router import callmodel
from router.callmodel import (
    CommandClass,
    CommandContext,
    CommandReason,
    Phase,
    Step,
    classify_command,
    transition,
    workplace_of,
)
from router.events import CallEvent, CallRef, CallState, CallType, Party

NUMBER, OTHER = "74996497803", "78005560251"
IVANOV, PETROVA = "883140777716581", "883140582526566"
DESK, MOBILE = "883140000000001", "883140000000002"
"""Two terminals of ivanov's workplace (neither has the workplace's own SIP ID)."""


@dataclass
class Pbx:
    """A :class:`callmodel.PbxView` from plain values."""

    workplace_ids: frozenset[str] | None = frozenset({IVANOV, PETROVA})
    terminal_workplaces: Mapping[str, str] = field(
        default_factory=lambda: {DESK: IVANOV, MOBILE: IVANOV, PETROVA: PETROVA}
    )
    park_named: frozenset[str] = frozenset()


def leg(
    state: CallState = CallState.CONNECTED,
    *,
    id: str | None = None,
    account: str | None = None,
    kind: CallType = CallType.INCOMING,
    forwarders: tuple[str, ...] = (),
) -> CallEvent:
    """A leg whose PBX side (callee, or caller for outgoing) has ``id`` and ``accountId``."""
    pbx_side = Party(id=id, account_id=account, forwarders=forwarders)
    client = Party(id="79219462761", account_id="79219462761@pstn")
    caller, callee = (pbx_side, client) if kind is CallType.OUTGOING else (client, pbx_side)
    return CallEvent(
        CallRef("c1", "t1"), state, kind, caller, callee, transport_id="10.133.1.1:5073"
    )


def trying(callee: str = NUMBER, *, forwarders: tuple[str, ...] = ()) -> CallEvent:
    """An incoming trying to ``callee``."""
    return leg(CallState.TRYING, id=callee, account=callee, forwarders=forwarders)


# -- which trying is parked --------------------------------------------------------------------


def test_parked_trying_needs_a_listed_number_and_no_forwarders() -> None:
    """Listed number, incoming, no forwarders: parked; anything else is not."""
    assert callmodel.is_parked_trying(trying(), {NUMBER})
    assert not callmodel.is_parked_trying(trying(OTHER), {NUMBER})
    assert not callmodel.is_parked_trying(trying(forwarders=(IVANOV,)), {NUMBER})
    assert not callmodel.is_parked_trying(leg(CallState.SHOWING, id=NUMBER), {NUMBER})
    outgoing = leg(CallState.TRYING, id=NUMBER, kind=CallType.OUTGOING)
    assert not callmodel.is_parked_trying(outgoing, {NUMBER})


def test_unknown_number_list_parks_only_what_routing_park_names() -> None:
    """Numbers unknown: only the numbers routing.park names count; none named: no call does."""
    assert not callmodel.is_parked_trying(trying(), None)
    assert not callmodel.is_parked_trying(trying(), None, frozenset())
    assert callmodel.is_parked_trying(trying(), None, frozenset({NUMBER}))
    assert not callmodel.is_parked_trying(trying(OTHER), None, frozenset({NUMBER}))
    # A known list decides on its own, whatever routing.park names.
    assert not callmodel.is_parked_trying(trying(), {OTHER}, frozenset({NUMBER}))


# -- which workplace a leg is at ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("id_", "account", "expected"),
    [
        (IVANOV, DESK, IVANOV),  # id is a known workplace: it wins
        (NUMBER, MOBILE, IVANOV),  # id is not: the terminal maps to its workplace
        (None, MOBILE, IVANOV),
        (NUMBER, PETROVA, PETROVA),  # the account is itself a workplace (and a terminal)
        (NUMBER, "883149999999999", None),  # neither: not one of ours
        (NUMBER, None, None),
        ("79219462761", "79219462761@pstn", None),
    ],
)
def test_workplace_rule(id_: str | None, account: str | None, expected: str | None) -> None:
    """id when a known workplace, else accountId through terminals, else accountId if known."""
    assert workplace_of(leg(id=id_, account=account), Pbx()) == expected


def test_account_that_is_a_workplace_but_no_terminal() -> None:
    """accountId that terminalsInfo does not list but that is a workplace counts as one."""
    pbx = Pbx(terminal_workplaces={})
    assert workplace_of(leg(id=NUMBER, account=PETROVA), pbx) == PETROVA


def test_terminal_of_an_unlisted_workplace_is_not_ours() -> None:
    """A terminal mapped to a workplace MTT no longer lists is none of ours."""
    pbx = Pbx(workplace_ids=frozenset({PETROVA}))
    assert workplace_of(leg(id=NUMBER, account=DESK), pbx) is None


def test_no_workplace_is_known_before_the_directory_loads() -> None:
    """workplace_ids None (not fetched yet) or empty: no leg is at one of ours."""
    assert workplace_of(leg(id=IVANOV, account=IVANOV), Pbx(workplace_ids=None)) is None
    assert workplace_of(leg(id=IVANOV, account=IVANOV), Pbx(workplace_ids=frozenset())) is None


def test_outgoing_leg_is_at_the_callers_workplace() -> None:
    """makeCall: the caller's id is the company's number, its accountId the terminal."""
    event = leg(id=OTHER, account=MOBILE, kind=CallType.OUTGOING)
    assert workplace_of(event, Pbx()) == IVANOV
    assert callmodel.busy_workplace(event, Pbx()) == IVANOV


def test_without_a_directory_the_account_as_sent() -> None:
    """No directory (the default): accountId, else id, as before."""
    assert workplace_of(leg(id=NUMBER, account=DESK)) == DESK
    assert workplace_of(leg(id=IVANOV)) == IVANOV
    assert callmodel.freed_workplace(leg(CallState.HIDING, account=DESK)) == DESK
    assert callmodel.busy_workplace(leg(CallState.SHOWING, account=DESK)) is None


def test_pbx_view_is_recognised_once() -> None:
    """Anything with the three members is a PbxView; a bare object is not."""
    assert callmodel.pbx_view(Pbx()) is not None
    assert callmodel.pbx_view(object()) is None


# -- the flow ----------------------------------------------------------------------------------


def test_a_parked_call_transferred_and_answered() -> None:
    """park -> transfer -> answer -> hang up -> record, with the document's notifications."""
    steps = [Step.PARK, Step.TRANSFER, Step.ANSWER, Step.HANG_UP, Step.RECORD]
    phase, notified = Phase.NEW, list[CallState]()
    for step in steps:
        moved = transition(phase, step)
        assert moved is not None, (phase, step)
        phase = moved.to
        notified.extend(moved.notify)
    assert phase is Phase.DONE
    assert notified == ["trying", "showing", "connected", "finished", "recorded"]


def test_release_and_window_are_silent_then_the_pbx_routes() -> None:
    """terminateCall and the end of the window notify nothing; the PBX's pick shows."""
    for step in (Step.TERMINATE, Step.WINDOW_OVER):
        assert transition(Phase.PARKED, step) == (Phase.ROUTING, ())
    assert transition(Phase.ROUTING, Step.PICK) == (Phase.RINGING, (CallState.SHOWING,))


def test_transfer_of_a_ringing_or_answered_call_hides_first() -> None:
    """A transfer away from a workplace: hiding there, showing at the next."""
    for phase in (Phase.RINGING, Phase.CONNECTED):
        assert transition(phase, Step.TRANSFER) == (
            Phase.RINGING,
            (CallState.HIDING, CallState.SHOWING),
        )


def test_make_call_flow() -> None:
    """makeCall: trying (the workplace rings), showing (dialling), connected, finished."""
    assert transition(Phase.NEW, Step.PLACE, outgoing=True) == (Phase.RINGING, ("trying",))
    assert transition(Phase.RINGING, Step.ANSWER, outgoing=True) == (Phase.DIALLING, ("showing",))
    assert transition(Phase.RINGING, Step.TRANSFER, outgoing=True) is None


def test_expected_sequences_follow_from_the_flow() -> None:
    """The audit's table: derived from the flows, not written twice."""
    after = callmodel.EXPECTED_AFTER
    assert after[None] == {CallState.TRYING}
    assert after[CallState.TRYING] == {CallState.SHOWING, CallState.FINISHED}
    assert CallState.CONNECTED in after[CallState.SHOWING]
    assert after[CallState.FINISHED] == {CallState.RECORDED}
    assert after[CallState.RECORDED] == frozenset()


# -- commands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctx", "reason"),
    [
        (CommandContext(Phase.PARKED, waiting=True), CommandReason.PARKED),
        (CommandContext(Phase.PARKED, waiting=True, maybe_applied=True), "after_ambiguous"),
        (CommandContext(Phase.RINGING, waiting=True, window_over=True), "after_window"),
        (CommandContext(Phase.RINGING, sent_here=True), CommandReason.REROUTE),
        (CommandContext(Phase.RINGING, let_go=True), CommandReason.REROUTE),
        (CommandContext(Phase.ROUTING, let_go=True), CommandReason.REROUTE),
        (CommandContext(Phase.CONNECTED, let_go=True), CommandReason.ANSWERED),
        (CommandContext(Phase.ENDED, let_go=True), CommandReason.ENDED),
        (CommandContext(Phase.RINGING), CommandReason.PBX_RINGING),
        (CommandContext(Phase.ROUTING), CommandReason.PBX_ROUTING),
        (CommandContext(Phase.CONNECTED, sent_here=True), CommandReason.ANSWERED),
        (CommandContext(Phase.ENDED), CommandReason.ENDED),
        (CommandContext(Phase.DONE), CommandReason.ENDED),
        (CommandContext(Phase.RINGING, outgoing=True), CommandReason.OUTGOING),
        (CommandContext(Phase.PARKED), CommandReason.PBX_ROUTING),
    ],
)
def test_command_reasons(ctx: CommandContext, reason: str) -> None:
    """Each situation a command can meet has one reason."""
    assert classify_command(ctx) == reason


def test_only_a_parked_call_or_a_reroute_is_not_a_violation() -> None:
    """fine for parked, reroute for a re-route, every other reason a violation."""
    verdicts = {reason: reason.verdict for reason in CommandReason}
    assert verdicts.pop(CommandReason.PARKED) is CommandClass.FINE
    assert verdicts.pop(CommandReason.REROUTE) is CommandClass.REROUTE
    assert set(verdicts.values()) == {CommandClass.VIOLATION}
