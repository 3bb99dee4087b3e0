"""The :class:`Simulator`: one object holding the PBX, the token authority, faults and calls.

Tests, ``demo`` and ``bench`` drive it from Python; the HTTP layer (:mod:`router.simulator.app`)
is a thin shell over the same methods.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from router.mtt.tokens import TokenResponse
from router.simulator.calls import CallEngine
from router.simulator.commands import CommandDesk
from router.simulator.config import Quirks, SimConfig
from router.simulator.faults import Faults
from router.simulator.pbx import Pbx
from router.simulator.records import NotificationRecord, RequestRecord, SimCall, Violation
from router.simulator.tokens import TokenAuthority
from router.simulator.webhook import WebhookSender
from router.simulator.wire import IdMaker


class Simulator:
    """MTT as seen by one integration: OAuth, the Open API, the PBX and its calls.

    Create it with :func:`router.simulator.create_sim_app` (which opens and closes it with the
    app) or :func:`router.simulator.serve_simulator` (which also binds a port and sets ``url``).
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.rng = random.Random(self.config.seed)
        ids = IdMaker(self.rng)
        self.pbx = Pbx(self.config)
        self.tokens = TokenAuthority(self.config, ids)
        self.faults = Faults(self.rng)
        self.quirks = Quirks.of(self.config)
        """What MTT's document leaves open, switchable at run time."""
        self.webhook = WebhookSender(self.config.webhook_timeout_s, self.config.webhook_connections)
        self.engine = CallEngine(self.config, self.pbx, self.webhook, ids, self.faults, self.quirks)
        self.commands = CommandDesk(self.engine)
        self.requests: deque[RequestRecord] = deque(maxlen=self.config.request_log_size)
        self.url = ""
        """Base URL (``http://host:port``) once served; use it as both oauth_url and api_url."""
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<Simulator url={self.url!r} calls={len(self.engine.calls)}>"

    async def open(self) -> None:
        """Open the webhook session (the app's cleanup context calls this)."""
        await self.webhook.open()

    async def close(self) -> None:
        """Cancel every timer and delivery, close the webhook session."""
        await self.engine.shutdown()
        await self.webhook.close()

    # -- webhook --------------------------------------------------------------------------

    @property
    def webhook_url(self) -> str | None:
        """Where notifications go (the daemon's ``<redirect_uri>/events``); settable any time."""
        return self.engine.delivery.webhook_url

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        self.engine.delivery.webhook_url = url

    # -- calls ----------------------------------------------------------------------------

    def start_call(
        self,
        caller: str,
        callee: str,
        *,
        forwarders: Sequence[str] = (),
        talk_ms: float | None = None,
        answer: Mapping[str, float | None] | None = None,
    ) -> SimCall:
        """Place an incoming call without waiting; ``trying`` goes out in the background.

        ``callee`` must be one of the PBX's external numbers (any spelling). ``forwarders`` makes
        it a forwarded leg (never parked). ``answer`` overrides, for this call, how workplaces
        answer: ``{sip_id: after_ms}``, ``None`` meaning never. Raises ``ValueError``.
        """
        return self.engine.start_incoming(
            caller, callee, forwarders=forwarders, talk_ms=talk_ms, answer=answer
        )

    async def place_call(
        self,
        caller: str,
        callee: str,
        *,
        forwarders: Sequence[str] = (),
        talk_ms: float | None = None,
        answer: Mapping[str, float | None] | None = None,
    ) -> SimCall:
        """:meth:`start_call`, returning once the webhook has answered the ``trying`` POST."""
        call = self.start_call(
            caller, callee, forwarders=forwarders, talk_ms=talk_ms, answer=answer
        )
        return await call.wait_trying()

    def make_call(self, workplace: str, number: str) -> SimCall:
        """What ``POST /makeCall`` does: ring ``workplace``, then dial ``number``."""
        return self.engine.start_outgoing(workplace, number)

    def call(self, call_id: str) -> SimCall | None:
        """The call with this id, if still in the log."""
        return self.engine.calls.get(call_id)

    def calls(self) -> list[SimCall]:
        """Every call in the log, oldest first."""
        return list(self.engine.calls.values())

    def violations(self) -> list[Violation]:
        """Commands that may have acted on a live call, oldest first (tests assert none)."""
        return list(self.engine.violations)

    # -- PBX settings ---------------------------------------------------------------------

    def set_answer(self, workplace: str, after_ms: float | None) -> None:
        """Make ``workplace`` answer after ``after_ms`` from now on (``None``: never)."""
        self.pbx.set_answer(workplace, after_ms)

    def set_decline(self, workplace: str, after_ms: float | None) -> None:
        """Make ``workplace`` decline ringing calls after ``after_ms`` (``None``: it does not)."""
        self.pbx.set_decline(workplace, after_ms)

    def set_parking(self, numbers: Iterable[str], on: bool) -> None:
        """What ``setParkingNumbers`` does; ``ValueError`` naming numbers that are not ours."""
        if unknown := self.pbx.set_parking(numbers, on):
            raise ValueError(f"not external numbers of the account: {', '.join(unknown)}")

    async def set_numbers(self, numbers: Iterable[str], *, notify: bool = True) -> None:
        """Change the external numbers, then send ``numbersChanged``."""
        self.pbx.set_numbers(numbers)
        if notify:
            await self.notify_vpbx("numbersChanged")

    async def set_workplaces(self, workplaces: Mapping[str, str], *, notify: bool = True) -> None:
        """Change the workplaces (SIP ID -> name), then send ``workplacesChanged``."""
        self.pbx.set_workplaces(workplaces)
        if notify:
            await self.notify_vpbx("workplacesChanged")

    async def notify_vpbx(self, event_type: str) -> NotificationRecord:
        """Send a ``vpbxNotifications`` event to the webhook and wait for its answer."""
        return await self.engine.notify_vpbx(event_type)

    # -- tokens ---------------------------------------------------------------------------

    def issue_tokens(self) -> TokenResponse:
        """A valid token answer without the OAuth dance (counted as a ``direct`` grant)."""
        return self.tokens.issue_direct()

    def revoke_access_tokens(self) -> int:
        """Forget every access token: the next API request with one gets 401."""
        return self.tokens.revoke_access()

    def expire_access_tokens(self) -> int:
        """Make every access token expire now."""
        return self.tokens.expire_access()

    def revoke_refresh_tokens(self) -> int:
        """Forget every refresh token: the next refresh gets ``invalid_grant``."""
        return self.tokens.revoke_refresh()

    # -- records --------------------------------------------------------------------------

    def record_request(self, record: RequestRecord) -> None:
        """Keep ``record`` in the request log (the HTTP layer calls this)."""
        self.requests.append(record)

    def requests_to(self, endpoint: str | None = None) -> list[RequestRecord]:
        """Requests received (all, or to ``endpoint`` as the document spells it), oldest first."""
        return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    def stats(self) -> dict[str, Any]:
        """Counts for ``/_sim/stats``: grants, refusals, requests, calls by outcome, deliveries."""
        outcomes: Counter[str] = Counter()
        commands: Counter[str] = Counter()
        latencies: list[float] = []
        delivered = failed = skipped = 0
        for call in self.engine.calls.values():
            outcomes[str(call.outcome) if call.outcome else "pending"] += 1
            if call.late:
                outcomes["late_command"] += 1
            commands.update(str(c.verdict) for c in call.commands if c.verdict is not None)
            if (latency := call.decision_latency_s) is not None:
                latencies.append(latency)
            for n in call.notifications:
                if n.status is not None and n.status < 300:
                    delivered += 1
                elif n.error == "skipped":
                    skipped += 1
                elif n.status is not None or n.error is not None:
                    failed += 1
        by_endpoint: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        for r in self.requests:
            by_endpoint[r.endpoint] += 1
            by_status[str(r.status)] += 1
        return {
            "grants": {
                "authorization_code": self.tokens.grants["authorization_code"],
                "refresh_token": self.tokens.grants["refresh_token"],
                "direct": self.tokens.grants["direct"],
            },
            "oauth_refusals": dict(self.tokens.refusals),
            "live_access_tokens": len(self.tokens.access),
            "requests": {"by_endpoint": dict(by_endpoint), "by_status": dict(by_status)},
            "calls": {
                "total": len(self.engine.calls),
                "live": self.engine.live_calls(),
                "by_outcome": dict(outcomes),
                "unknown_call_commands": self.engine.unknown_commands,
                "commands": {v: commands[v] for v in ("fine", "reroute", "violation")},
                "violations": len(self.engine.violations),
                "decision_latency_s": _summary(latencies),
            },
            "notifications": {"delivered": delivered, "failed": failed, "skipped": skipped},
        }

    async def reset(self) -> None:
        """Back to the configured state: no calls, tokens, faults or logs; webhook as configured."""
        await self.engine.reset()
        self.pbx.reset()
        self.quirks.restore(self.config)
        self.tokens.reset()
        self.faults.clear()
        self.requests.clear()


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"count": len(ordered), "p50": pct(0.5), "p99": pct(0.99), "max": ordered[-1]}


SIM_KEY = web.AppKey("mtt_simulator", Simulator)
"""Where :func:`create_sim_app` keeps the :class:`Simulator`."""
