"""The call generator: plays each call through the flow of :mod:`router.callmodel`.

Every move of a call is one step of the model (:meth:`CallEngine.step`): the model says which
phase follows and which notifications go out; this module only fills in the payloads and decides
when the next step happens (who answers, how long they ring and talk). Every wait is a
``loop.call_later`` timer or the continuation of one webhook POST, so a call costs no task while
it waits (the bench pushes hundreds of calls a second through here). A call's notifications go
out one at a time, in order, whatever steps a command forces in between.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from router import callmodel
from router.callmodel import Phase, Step
from router.events import CallState
from router.simulator.config import Quirks, SimConfig
from router.simulator.delivery import Delivery
from router.simulator.faults import Faults
from router.simulator.pbx import Pbx
from router.simulator.records import CallOutcome, NotificationRecord, SimCall, Violation
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
INCOMING, OUTGOING = "incoming", "outgoing"
_RELEASES = (Step.TERMINATE, Step.WINDOW_OVER)


class CallEngine:
    """Owns every live call: its timers, its webhook deliveries and its record."""

    def __init__(
        self,
        config: SimConfig,
        pbx: Pbx,
        sender: WebhookSender,
        ids: IdMaker,
        faults: Faults,
        quirks: Quirks | None = None,
    ) -> None:
        self.config = config
        self.pbx = pbx
        self.ids = ids
        self.faults = faults
        self.quirks = quirks if quirks is not None else Quirks.of(config)
        self.calls: OrderedDict[str, SimCall] = OrderedDict()
        self.unknown_commands = 0
        self.violations: deque[Violation] = deque(maxlen=config.call_log_size)
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
        call = self._new_call(call_id, tag, self.ids.transport(), INCOMING, caller, number)
        call.talk_ms = self.config.talk_ms if talk_ms is None else talk_ms
        call.answer = dict(answer or {})
        call.forwarders = tuple(forwarders)
        call.parked = not call.forwarders and self.pbx.is_parked(number)
        if call.parked:
            self.step(call, Step.PARK)
            return call
        self._resolve(call, CallOutcome.FORWARDED if call.forwarders else CallOutcome.NOT_PARKED)
        self.step(call, Step.PLACE)
        return call

    def start_outgoing(self, workplace: str, number: str) -> SimCall:
        """makeCall: ring ``workplace`` first, then, once it answers, dial ``number``."""
        if workplace not in self.pbx.workplaces:
            raise ValueError(f"callerId {workplace!r} is not a workplace of the PBX")
        call_id, tag = self.ids.outgoing()
        call = self._new_call(call_id, tag, self.ids.transport(5070), OUTGOING, workplace, number)
        self._resolve(call, CallOutcome.OUTGOING)
        call.tried.append(workplace)
        call.at = workplace
        self.step(call, Step.PLACE)
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

    # -- the model's steps ----------------------------------------------------------------

    def can(self, call: SimCall, step: Step) -> bool:
        """Whether the model has ``step`` for ``call`` in its current phase."""
        return callmodel.transition(call.phase, step, outgoing=call.type == OUTGOING) is not None

    def step(self, call: SimCall, step: Step, to: str | None = None) -> None:
        """Move ``call`` by ``step`` (to workplace ``to``) and send what the model says."""
        moved = callmodel.transition(call.phase, step, outgoing=call.type == OUTGOING)
        if moved is None:
            raise RuntimeError(f"the call model has no {step} from {call.phase}")
        call.epoch += 1  # continuations of the earlier step stand down
        self._cancel_timer(call)
        leaving, call.phase = call.phase, moved.to
        states = moved.notify
        if leaving is Phase.PARKED and step in _RELEASES and self.quirks.trying_after_release:
            states = (CallState.TRYING, *states)  # the document does not say it never happens
        if to is not None:
            call.tried.append(to)
        if step is Step.NO_ANSWER and call.at is not None and call.at == call.sent_to:
            call.let_go = call.at  # the PBX goes on with a call the daemon sent here
        self._engage(call)
        if leaving is Phase.NEW:
            self._announce(call, states)
            return
        for i, state in enumerate(states):
            if state is CallState.SHOWING and to is not None:
                call.at = to
            info = self._info(call, state)
            if state is CallState.HIDING:
                call.at = None
            self._send(call, info, self._settle if i == len(states) - 1 else None)
        if not states:
            self._settle(call)

    def _announce(self, call: SimCall, states: tuple[CallState, ...]) -> None:
        """The call's first notification (``trying``), and its parking window if parked."""
        if call.type == INCOMING and not call.parked and not self.config.announce_unparked:
            call.trying_done.set()
            self._settle(call)
            return
        copies = 1 + self.faults.duplicate_trying if call.parked else 1
        [state] = states
        sent = self._send(call, self._info(call, state), self._settle, copies, call.trying_done.set)
        if call.parked and sent is not None:
            call.trying_sent_at, call.trying_sent_at_wall = sent.sent_at, sent.sent_at_wall
            call.deadline = call.trying_sent_at + self.config.parking_window_s
            call.timer = asyncio.get_running_loop().call_later(
                self.config.parking_window_s, self.expire, call
            )

    def _settle(self, call: SimCall) -> None:
        """Once a step's notifications went out: arrange the call's next step."""
        phase, workplace = call.phase, call.at
        if phase is Phase.ROUTING:
            picked = self.pbx.pick(call.callee, exclude=call.tried)
            if picked is None:
                self.step(call, Step.NOBODY)
            else:
                self.step(call, Step.PICK, picked)
        elif phase is Phase.RINGING and workplace is not None:
            after = self.pbx.answer_after_ms(workplace, call.answer)
            declines = self.pbx.decline_after_ms(workplace) if call.type == INCOMING else None
            if call.type == INCOMING and self.pbx.is_busy(workplace):
                self.step(call, Step.NO_ANSWER)
            elif declines is not None and (after is None or declines < after):
                self._later(call, declines, Step.NO_ANSWER)
            elif after is None or after >= self.config.ring_timeout_ms:
                self._later(call, self.config.ring_timeout_ms, Step.NO_ANSWER)
            else:
                self._later(call, after, Step.ANSWER)
        elif phase is Phase.DIALLING:
            self._later(call, self.config.callee_answer_ms, Step.ANSWER)
        elif phase is Phase.CONNECTED:
            self._later(call, call.talk_ms, Step.HANG_UP)
        elif phase is Phase.ENDED:
            if call.connected_at is None:
                self.step(call, Step.CLOSE)
            else:
                self._later(call, self.config.record_delay_ms, Step.RECORD)
        elif phase is Phase.DONE:
            self._done(call)

    def expire(self, call: SimCall) -> None:
        """The parking window ran out with no command: the PBX takes over."""
        if call.phase is not Phase.PARKED:
            return
        call.timer = None
        self._resolve(call, CallOutcome.PBX_TIMEOUT)
        self.step(call, Step.WINDOW_OVER)

    def _engage(self, call: SimCall) -> None:
        """Keep the PBX's "on a call" in step: from the answer to the end of the talk."""
        talking = call.phase is Phase.CONNECTED or call.phase is Phase.DIALLING
        if talking and call.engaged is None and call.at is not None:
            call.engaged = call.workplace = call.at
            call.terminal = self.pbx.answering_terminal(call.at)
            self.pbx.engage(call.at)
        elif not talking and call.engaged is not None:
            self.pbx.release(call.engaged)
            call.engaged = None
        if call.phase is Phase.CONNECTED:
            call.connected_at = time.monotonic()

    # -- payloads -------------------------------------------------------------------------

    def _info(self, call: SimCall, state: CallState) -> CallInfoWire:
        """The ``callInfo`` of ``call`` in ``state``, as the document shows it."""
        if state is CallState.RECORDED:
            day = call.start_time[:10].replace("-", "/")
            url = f"https://records.mtt.example/{day}/{quote(call.id, safe='')}.mp3"
            return recorded_info(call.id, call.terminal or call.workplace or call.callee, url)
        answered = call.connected_at is not None
        start = start_time() if state is CallState.CONNECTED else ""
        timing = state is not CallState.FINISHED
        centrex = self.config.centrex_id
        if call.type == OUTGOING:
            # The workplace calls out under the company's (first) external number.
            shown_as = self.pbx.numbers[0] if self.pbx.numbers else call.caller
            plus = state is CallState.TRYING or state is CallState.SHOWING or not answered
            terminal = self.pbx.answering_terminal(call.caller)
            info = outgoing_info(
                call, str(state), shown_as, terminal, centrex, plus=plus, start=start, timing=timing
            )
            reason = REASON_ORIGINATE if answered else REASON_ORIGINATE_NO_ANSWER
        else:
            at = call.at if state is not CallState.FINISHED or answered else None
            sip_id = None
            if at is not None:
                sip_id = at if self.quirks.leg_id == "workplace" else call.callee
            account = None if at is None else self.pbx.answering_terminal(at)
            info = incoming_info(
                call, str(state), centrex, sip_id=sip_id, terminal=account, start=start,
                timing=timing,
            )  # fmt: skip
            reason = REASON_NORMAL if answered else REASON_NO_ANSWER
        if state is CallState.FINISHED:
            talked_s = time.monotonic() - call.connected_at if call.connected_at else 0.0
            ended(info, round(talked_s), reason)
        return info

    # -- plumbing -------------------------------------------------------------------------

    def _resolve(self, call: SimCall, outcome: CallOutcome, at: float | None = None) -> None:
        call.outcome = outcome
        call.outcome_at = time.monotonic() if at is None else at
        call.outcome_known.set()

    def resolve(self, call: SimCall, outcome: CallOutcome, at: float) -> None:
        """A command ended the parking at ``at``."""
        self._resolve(call, outcome, at)

    def _done(self, call: SimCall) -> None:
        call.done_at = time.monotonic()
        self._live.discard(call)
        call.finished.set()

    def _cancel_timer(self, call: SimCall) -> None:
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None

    def _later(self, call: SimCall, delay_ms: float, step: Step) -> None:
        if not self.delivery.closing:
            loop = asyncio.get_running_loop()
            call.timer = loop.call_later(max(0.0, delay_ms) / 1000.0, self.step, call, step)

    def _send(
        self,
        call: SimCall,
        info: CallInfoWire,
        then: Callable[[SimCall], None] | None = None,
        copies: int = 1,
        always: Callable[[], None] | None = None,
    ) -> NotificationRecord | None:
        """POST one notification of ``call`` once the one in flight was answered; then run
        ``then(call)`` unless a later step overtook it (``always`` runs regardless)."""
        epoch = call.epoch

        def answered() -> None:
            call.in_flight = False
            if always is not None:
                always()
            if then is not None and call.epoch == epoch:
                then(call)
            if call.outbox and not call.in_flight:
                self._post(call, *call.outbox.popleft())

        if call.in_flight:
            call.outbox.append((info, answered, 1))
            return None
        return self._post(call, info, answered, copies)

    def _post(
        self, call: SimCall, info: Any, answered: Callable[[], None] | None, copies: int
    ) -> NotificationRecord:
        call.in_flight = True
        payload = call_notification(info)
        return self.delivery.send(call.notifications, info["state"], payload, answered, copies)

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
        self.violations.clear()
        self.unknown_commands = 0
