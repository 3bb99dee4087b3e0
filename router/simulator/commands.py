"""transferCall and terminateCall as MTT's document allows them: carried out, and classified.

The document describes transferCall for answered and unanswered calls alike and never says that a
late or misaimed command fails, so the simulator carries every command out on whatever the call
is doing (a transfer of a call ringing or talking somewhere moves it; a terminate ends that leg)
and classifies it (:func:`router.callmodel.classify_command`): ``fine`` on a parked call inside
its window, ``reroute`` on a call still ringing unanswered where the daemon transferred it (or
let go unanswered from there, with the PBX now), and ``violation`` for anything else. Violations
are kept with the call and in :attr:`CallEngine.violations`, so tests can assert there are none.

HTTP answers: 404 for a call id never announced (harmless: nothing to act on, not classified) and
for a call that is over (MTT has no leg left), 400 for params that do not match the call or a
workplace the PBX does not have, 200 otherwise. A command a fault knob answered is classified too;
a 5xx or a dropped connection marks the call "maybe applied", so a second command is a violation.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from router import callmodel
from router.callmodel import CommandClass, CommandContext, Phase, Step
from router.simulator.calls import OUTGOING, CallEngine
from router.simulator.records import CallOutcome, CommandRecord, Refusal, SimCall, Violation

COMMANDS = {"transferCall": "transfer", "terminateCall": "terminate"}
"""The API endpoints that carry commands, and their kind."""


class CommandRefused(Exception):
    """A transferCall/terminateCall the PBX does not carry out; ``status`` is the HTTP answer."""

    def __init__(self, status: int, refusal: Refusal, message: str) -> None:
        self.status = status
        self.refusal = refusal
        super().__init__(message)


class CommandDesk:
    """Receives the commands for :class:`CallEngine`'s calls."""

    def __init__(self, engine: CallEngine) -> None:
        self.engine = engine

    def command(
        self, kind: str, call_id: str, tag: str, transport_id: str, callee: str = ""
    ) -> CommandRecord:
        """Carry out transferCall (``kind='transfer'``) or terminateCall, or raise why not."""
        engine = self.engine
        call = engine.calls.get(call_id)
        if call is None:
            engine.unknown_commands += 1
            raise CommandRefused(404, Refusal.UNKNOWN_CALL, f"call {call_id!r} not found")
        record = self._receive(kind, call, callee or None)
        if tag != call.tag or transport_id != call.transport_id:
            self._refuse(record, 400, Refusal.BAD_PARAMS, "call.tag or transportId differs")
        if kind == "transfer" and callee not in engine.pbx.workplaces:
            self._refuse(record, 400, Refusal.BAD_PARAMS, f"unknown workplace {callee!r}")
        step = Step.TRANSFER if kind == "transfer" else Step.TERMINATE
        if call.phase is Phase.ENDED or call.phase is Phase.DONE:
            self._refuse(record, 404, Refusal.GONE, f"call {call_id!r} is over")
        record.accepted = True
        if not engine.can(call, step):
            return record  # e.g. a transfer of a makeCall: the model has nothing it would do
        if call.phase is Phase.PARKED:
            call.command = record
            outcome = CallOutcome.TRANSFERRED if kind == "transfer" else CallOutcome.TERMINATED
            engine.resolve(call, outcome, record.received_at)
        if kind == "transfer" and record.verdict is not CommandClass.VIOLATION:
            call.sent_to = callee
        engine.step(call, step, callee or None)
        return record

    def unapplied(self, kind: str, body: Any, status: int | None) -> None:
        """A command a fault knob answered (``status``; ``None``: the connection was dropped)."""
        params = body.get("params") if isinstance(body, dict) else None
        ref = params.get("call") if isinstance(params, dict) else None
        call_id = ref.get("id") if isinstance(ref, dict) else None
        call = self.engine.calls.get(call_id) if isinstance(call_id, str) else None
        if call is None or not isinstance(params, dict):
            return
        callee = params.get("calleeId")
        record = self._receive(kind, call, callee if isinstance(callee, str) else None)
        record.refusal, record.status = Refusal.FAULT, status or 0
        if status is None or status >= 500:
            call.maybe_applied = True  # the daemon cannot know it was not

    def _receive(self, kind: str, call: SimCall, workplace: str | None) -> CommandRecord:
        """Record and classify a command for ``call`` as the PBX finds the call right now."""
        now, wall = time.monotonic(), time.time()
        if call.phase is Phase.PARKED and call.deadline is not None and now >= call.deadline:
            # The window timer has not fired yet (a busy loop): the PBX has routed it all the same.
            self.engine.expire(call)
        reason = callmodel.classify_command(context(call, now))
        record = CommandRecord(kind, now, wall, workplace=workplace, reason=reason)
        call.commands.append(record)
        if reason.verdict is CommandClass.VIOLATION:
            self.engine.violations.append(Violation(call.id, kind, reason, workplace, wall))
        return record

    @staticmethod
    def _refuse(record: CommandRecord, status: int, refusal: Refusal, message: str) -> NoReturn:
        record.refusal, record.status = refusal, status
        raise CommandRefused(status, refusal, message)


def context(call: SimCall, now: float) -> CommandContext:
    """What classifying a command for ``call`` at ``now`` looks at."""
    return CommandContext(
        phase=call.phase,
        outgoing=call.type == OUTGOING,
        waiting=call.parked and call.command is None,
        window_over=call.deadline is not None and now >= call.deadline,
        sent_here=call.sent_to is not None and call.at == call.sent_to,
        let_go=(
            call.sent_to is not None and call.let_go == call.sent_to and call.connected_at is None
        ),
        maybe_applied=call.maybe_applied,
    )
