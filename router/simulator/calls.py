"""The call generator: plays each call through the lifecycle of docs/CALL_MODEL.md.

Every step is a ``loop.call_later`` timer or the continuation of one webhook POST, so a call costs
no task while it waits (the bench pushes hundreds of calls a second through here). A call's next
notification is sent only after the previous one was answered, so the receiver sees them in order.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

from router.simulator.config import SimConfig
from router.simulator.delivery import Delivery
from router.simulator.faults import Faults
from router.simulator.pbx import Pbx
from router.simulator.records import (
    CallOutcome,
    CallPhase,
    CommandRecord,
    NotificationRecord,
    Refusal,
    SimCall,
)
from router.simulator.webhook import WebhookSender
from router.simulator.wire import (
    CallInfoWire,
    IdMaker,
    call_notification,
    ended,
    incoming_info,
    outgoing_info,
    recorded_info,
    start_time,
)

REASON_NORMAL = "Normal call clearing"
REASON_NO_ANSWER = "No answer"
REASON_ORIGINATE = "Originate leg disconnected"
REASON_ORIGINATE_NO_ANSWER = "Originate leg not answered"


class CommandRefused(Exception):
    """A transferCall/terminateCall the PBX will not carry out; ``status`` is the HTTP answer."""

    def __init__(self, status: int, refusal: Refusal, message: str) -> None:
        self.status = status
        self.refusal = refusal
        super().__init__(message)


class CallEngine:
    """Owns every live call: its timers, its webhook deliveries and its record."""

    def __init__(
        self, config: SimConfig, pbx: Pbx, sender: WebhookSender, ids: IdMaker, faults: Faults
    ) -> None:
        self.config = config
        self.pbx = pbx
        self.ids = ids
        self.faults = faults
        self.calls: OrderedDict[str, SimCall] = OrderedDict()
        self.unknown_commands = 0
        self.delivery = Delivery(config, sender)
        self._live: set[SimCall] = set()

    # -- placing calls --------------------------------------------------------------------

    def start_incoming(
        self,
        caller: str,
        callee: str,
        *,
        forwarders: Sequence[str] = (),
        talk_ms: float | None = None,
        answer: Mapping[str, float | None] | None = None,
    ) -> SimCall:
        """A client calls an external number; return at once with the call under way."""
        number = self.pbx.find_number(callee)
        if number is None:
            raise ValueError(f"callee {callee!r} is not one of the PBX's external numbers")
        call_id, tag = self.ids.incoming()
        call = self._new_call(call_id, tag, self.ids.transport(), "incoming", caller, number)
        call.talk_ms = self.config.talk_ms if talk_ms is None else talk_ms
        call.answer = dict(answer or {})
        call.forwarders = tuple(forwarders)
        call.parked = not call.forwarders and self.pbx.is_parked(number)
        trying = self._incoming_info(call, "trying", number)
        if call.parked:
            call.phase = CallPhase.PARKED
            copies = 1 + self.faults.duplicate_trying
            sent = self._send(call, trying, call.trying_done.set, copies)
            call.trying_sent_at, call.trying_sent_at_wall = sent.sent_at, sent.sent_at_wall
            call.deadline = call.trying_sent_at + self.config.parking_window_s
            call.timer = asyncio.get_running_loop().call_later(
                self.config.parking_window_s, self._expire, call
            )
            return call
        self._resolve(call, CallOutcome.FORWARDED if call.forwarders else CallOutcome.NOT_PARKED)
        if self.config.announce_unparked:

            def routed() -> None:
                call.trying_done.set()
                self._pbx_route(call)

            self._send(call, trying, routed)
        else:
            call.trying_done.set()
            self._pbx_route(call)
        return call

    def start_outgoing(self, workplace: str, number: str) -> SimCall:
        """makeCall: ring ``workplace`` first, then, once it answers, dial ``number``."""
        if workplace not in self.pbx.workplaces:
            raise ValueError(f"callerId {workplace!r} is not a workplace of the PBX")
        call_id, tag = self.ids.outgoing()
        call = self._new_call(call_id, tag, self.ids.transport(5070), "outgoing", workplace, number)
        call.talk_ms = self.config.talk_ms
        self._resolve(call, CallOutcome.OUTGOING)
        call.tried.append(workplace)

        def rung() -> None:
            call.trying_done.set()
            after_ms = self.pbx.answer_after_ms(workplace)
            if after_ms is None or after_ms >= self.config.ring_timeout_ms:
                self._later(call, self.config.ring_timeout_ms, self._outgoing_unanswered, call)
            else:
                self._later(call, after_ms, self._outgoing_dial, call)

        self._send(call, self._outgoing_info(call, "trying", plus=True), rung)
        return call

    def _new_call(
        self, call_id: str, tag: str, transport: str, kind: str, caller: str, callee: str
    ) -> SimCall:
        call = SimCall(
            id=call_id,
            tag=tag,
            transport_id=transport,
            type=kind,
            caller=caller,
            callee=callee,
            placed_at=time.monotonic(),
            placed_at_wall=time.time(),
            start_time=start_time(),
            talk_ms=self.config.talk_ms,
        )
        self.calls[call_id] = call
        if len(self.calls) > self.config.call_log_size:
            self.calls.popitem(last=False)
        self._live.add(call)
        return call

    # -- commands from the API ------------------------------------------------------------

    def command(
        self, kind: str, call_id: str, tag: str, transport_id: str, callee: str = ""
    ) -> None:
        """Carry out transferCall (``kind='transfer'``) or terminateCall, or raise why not."""
        now, wall = time.monotonic(), time.time()
        call = self.calls.get(call_id)
        if call is None:
            self.unknown_commands += 1
            raise CommandRefused(404, Refusal.UNKNOWN_CALL, f"call {call_id!r} not found")
        record = CommandRecord(kind, now, wall, workplace=callee or None)
        if tag != call.tag or transport_id != call.transport_id:
            self._refuse(call, record, 400, Refusal.BAD_PARAMS, "call.tag or transportId differs")
        if kind == "transfer" and callee not in self.pbx.workplaces:
            self._refuse(call, record, 400, Refusal.BAD_PARAMS, f"unknown workplace {callee!r}")
        if call.phase is CallPhase.PARKED and call.deadline is not None and now >= call.deadline:
            # The window timer has not fired yet (a busy loop): the PBX has routed it all the same.
            self._cancel_timer(call)
            self._expire(call)
        if call.phase is not CallPhase.PARKED:
            if call.command is not None:
                self._refuse(call, record, 400, Refusal.DUPLICATE, "call already commanded")
            if call.outcome is CallOutcome.PBX_TIMEOUT:
                self._refuse(call, record, 400, Refusal.LATE, "parking window is over")
            self._refuse(call, record, 400, Refusal.NOT_PARKED, "call is not parked")
        self._cancel_timer(call)
        record.accepted = True
        call.command = record
        call.phase = CallPhase.ROUTING
        if kind == "transfer":
            self._resolve(call, CallOutcome.TRANSFERRED, now)
            self._ring(call, callee)
        else:
            self._resolve(call, CallOutcome.TERMINATED, now)
            self._pbx_route(call)

    def _refuse(
        self, call: SimCall, record: CommandRecord, status: int, refusal: Refusal, message: str
    ) -> NoReturn:
        record.refusal, record.status = refusal, status
        call.refused.append(record)
        raise CommandRefused(status, refusal, message)

    # -- the incoming lifecycle -----------------------------------------------------------

    def _expire(self, call: SimCall) -> None:
        """The parking window ran out with no command: the PBX takes over."""
        if call.phase is not CallPhase.PARKED:
            return
        call.timer = None
        call.phase = CallPhase.ROUTING
        self._resolve(call, CallOutcome.PBX_TIMEOUT)
        self._pbx_route(call)

    def _pbx_route(self, call: SimCall) -> None:
        workplace = self.pbx.pick(call.callee, exclude=call.tried)
        if workplace is not None:
            self._ring(call, workplace)
            return
        info = self._incoming_info(call, "finished", call.callee, timing=False)
        ended(info, 0, REASON_NO_ANSWER)
        self._send(call, info, lambda: self._done(call))

    def _ring(self, call: SimCall, workplace: str) -> None:
        call.tried.append(workplace)

        def rung() -> None:
            after_ms = self.pbx.answer_after_ms(workplace, call.answer)
            if self.pbx.is_busy(workplace):
                self._hide(call, workplace)
            elif after_ms is None or after_ms >= self.config.ring_timeout_ms:
                self._later(call, self.config.ring_timeout_ms, self._hide, call, workplace)
            else:
                self._later(call, after_ms, self._connect, call, workplace)

        self._send(call, self._incoming_info(call, "showing", workplace), rung)

    def _hide(self, call: SimCall, workplace: str) -> None:
        info = self._incoming_info(call, "hiding", workplace)
        self._send(call, info, lambda: self._pbx_route(call))

    def _connect(self, call: SimCall, workplace: str) -> None:
        self.pbx.engage(workplace)
        call.workplace = workplace
        info = self._incoming_info(call, "connected", workplace, start=start_time())
        self._send(call, info, lambda: self._later(call, call.talk_ms, self._hang_up, call))

    def _hang_up(self, call: SimCall) -> None:
        workplace = call.workplace
        assert workplace is not None
        self.pbx.release(workplace)
        if call.type == "incoming":
            info = self._incoming_info(call, "finished", workplace, timing=False)
            reason = REASON_NORMAL
        else:
            info = self._outgoing_info(call, "finished", plus=False, timing=False)
            reason = REASON_ORIGINATE
        ended(info, round(call.talk_ms / 1000), reason)
        self._send(
            call, info, lambda: self._later(call, self.config.record_delay_ms, self._record, call)
        )

    def _record(self, call: SimCall) -> None:
        assert call.workplace is not None
        day = call.start_time[:10].replace("-", "/")
        url = f"https://records.mtt.example/{day}/{quote(call.id, safe='')}.mp3"
        self._send(call, recorded_info(call.id, call.workplace, url), lambda: self._done(call))

    # -- the makeCall lifecycle -----------------------------------------------------------

    def _outgoing_dial(self, call: SimCall) -> None:
        call.workplace = call.caller
        self.pbx.engage(call.caller)

        def ringing() -> None:
            self._later(call, self.config.callee_answer_ms, self._outgoing_connect, call)

        self._send(call, self._outgoing_info(call, "showing", plus=True), ringing)

    def _outgoing_connect(self, call: SimCall) -> None:
        info = self._outgoing_info(call, "connected", plus=False, start=start_time())
        self._send(call, info, lambda: self._later(call, call.talk_ms, self._hang_up, call))

    def _outgoing_unanswered(self, call: SimCall) -> None:
        info = self._outgoing_info(call, "finished", plus=True, timing=False)
        ended(info, 0, REASON_ORIGINATE_NO_ANSWER)
        self._send(call, info, lambda: self._done(call))

    def _incoming_info(
        self, call: SimCall, state: str, account: str, *, start: str = "", timing: bool = True
    ) -> CallInfoWire:
        return incoming_info(
            call, state, account, self.config.centrex_id, start=start, timing=timing
        )

    def _outgoing_info(
        self, call: SimCall, state: str, *, plus: bool, start: str = "", timing: bool = True
    ) -> CallInfoWire:
        # The workplace calls out under the company's (first) external number.
        shown_as = self.pbx.numbers[0] if self.pbx.numbers else call.caller
        return outgoing_info(
            call, state, shown_as, self.config.centrex_id, plus=plus, start=start, timing=timing
        )

    # -- plumbing -------------------------------------------------------------------------

    def _resolve(self, call: SimCall, outcome: CallOutcome, at: float | None = None) -> None:
        call.outcome = outcome
        call.outcome_at = time.monotonic() if at is None else at
        call.outcome_known.set()

    def _done(self, call: SimCall) -> None:
        call.phase = CallPhase.DONE
        call.done_at = time.monotonic()
        self._live.discard(call)
        call.finished.set()

    def _cancel_timer(self, call: SimCall) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None

    def _later(self, call: SimCall, delay_ms: float, fn: Callable[..., None], *args: Any) -> None:
        if not self.delivery.closing:
            loop = asyncio.get_running_loop()
            call.timer = loop.call_later(max(0.0, delay_ms) / 1000.0, fn, *args)

    def _send(
        self,
        call: SimCall,
        info: CallInfoWire,
        then: Callable[[], None] | None = None,
        copies: int = 1,
    ) -> NotificationRecord:
        """Record and POST one notification of ``call`` (``copies`` times); then run ``then``."""
        payload = call_notification(info)
        return self.delivery.send(call.notifications, info["state"], payload, then, copies)

    async def notify_vpbx(self, event_type: str) -> NotificationRecord:
        """Send ``vpbxNotifications`` with ``eventType`` and wait until it was delivered."""
        return await self.delivery.notify_vpbx(event_type)

    def live_calls(self) -> int:
        """Calls not finished yet."""
        return len(self._live)

    async def shutdown(self) -> None:
        """Stop every timer and delivery; calls in flight stay as they are in the records."""
        self.delivery.close()
        for call in self._live:
            self._cancel_timer(call)
            # Release anyone awaiting the call; its record stays as it was.
            call.trying_done.set()
            call.outcome_known.set()
            call.finished.set()
        self._live.clear()

    async def reset(self) -> None:
        """Drop every call and record, keep running."""
        await self.shutdown()
        self.delivery.reopen()
        self.calls.clear()
        self.unknown_commands = 0
