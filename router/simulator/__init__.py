"""MTT simulator: OAuth, the Open API, a PBX, a call generator and fault knobs, on one server.

It plays MTT for the daemon's tests, ``mtt-router demo``, ``mtt-router bench`` and
``mtt-router simulate``. Payloads copy MTT's document, inconsistencies included; the call
sequence is :mod:`router.callmodel`'s, step by step. Point both ``mtt.oauth_url`` and
``mtt.api_url`` at ``sim.url`` and set ``sim.webhook_url`` to the daemon's
``<redirect_uri>/events``.

Python API (stable)
-------------------
``SimConfig(...)``
    Frozen settings; defaults are the document's account: client_id
    ``ccb350cc-6218-40b0-b134-3d290f00b9e7``, secret ``iNmTWpDLeYkyzkUTVuCQwa``, numbers
    ``74996497803`` and ``78005560251`` (all parked), four workplaces starting with
    ``883140777716581``, parking window 5.0 s, access token 7200 s, refresh token 3 days.
    Call timing (``answer_after_ms``, ``ring_timeout_ms``, ``talk_ms``, ``record_delay_ms``,
    ``callee_answer_ms``) is in ms; ``answer_overrides={sip_id: ms or None}`` (None: never answers);
    ``decline_overrides={sip_id: ms}`` (it declines a ringing call after that long: ``hiding``);
    ``routes={number: (sip_id, ...)}`` is the PBX's own order (default: every workplace);
    ``terminals={terminal: sip_id}`` (a workplace none names has one with its own ID) and
    ``answering_terminals={sip_id: terminal}``; a leg at a workplace carries ``id`` = the
    workplace, ``accountId`` = the terminal (``leg_id="number"``: ``id`` = the external number);
    ``trying_after_release``, ``list_total_extra`` (the knobs of ``quirks``);
    ``terminals_key`` (``"terminals_list"`` or ``"terminalsList"``); ``redirect_uri=None`` accepts
    any; ``webhook_url``; ``seed`` for reproducible ids and fault rates; ``parked`` ("all" or a
    subset of ``numbers``); ``announce_unparked`` (send ``trying`` for calls that are not parked,
    default True, as MTT announces every call); ``skip_states`` (states recorded but not POSTed,
    to lighten load tests); ``call_log_size`` / ``request_log_size`` bound memory.
    ``generated_workplaces(n)`` makes n SIP IDs for load tests.
``create_sim_app(config=None, *, sim=None) -> web.Application``
    The app; the :class:`Simulator` is ``app[SIM_KEY]``. The webhook ``ClientSession`` lives in a
    cleanup context; every timer and delivery is cancelled when the app stops. Served this way
    (e.g. by ``aiohttp_client``), set ``sim.url`` yourself if you need it.
``async with serve_simulator(config=None, *, host="127.0.0.1", port=0) as sim``
    Serves a fresh app; ``sim.url`` is ``http://127.0.0.1:<port>``.
``Simulator``
    ``webhook_url`` (read/write, any time) ·
    ``start_call(caller, callee, *, forwarders=(), talk_ms=None, answer=None) -> SimCall``
    (synchronous, ``trying`` goes out in the background: the bench's fast path) ·
    ``await place_call(...same...) -> SimCall`` (returns once the webhook answered ``trying``) ·
    ``make_call(workplace, number) -> SimCall`` · ``call(id) -> SimCall | None`` · ``calls()`` ·
    ``set_answer(sip_id, after_ms | None)`` · ``set_decline(sip_id, after_ms | None)`` (it declines
    a ringing call after that long: ``hiding``) · ``set_parking(numbers, on)`` ·
    ``await set_numbers(numbers)`` / ``await set_workplaces({sip_id: name})`` (send
    ``numbersChanged`` / ``workplacesChanged``) · ``await notify_vpbx(event_type)`` ·
    ``issue_tokens() -> {access_token, expires_in, refresh_token, scope, token_type}`` ·
    ``revoke_access_tokens()`` · ``expire_access_tokens()`` · ``revoke_refresh_tokens()`` ·
    ``faults`` (:class:`Faults`: ``set(endpoint, EndpointFault(latency_ms, status, drop,
    after_apply, retry_after_s, rate, count))``, ``token_endpoint_down(503 | "drop" | None)``,
    ``storm_401 = N`` (fresh tokens refused too), ``duplicate_trying = N``, ``clear()``) ·
    ``requests_to(endpoint=None) -> [RequestRecord]`` ·
    ``stats()`` · ``tokens.grants["authorization_code" | "refresh_token" | "direct"]`` ·
    ``await reset()`` · ``pbx`` (numbers, parked, workplaces, terminals, ``is_busy``,
    ``set_terminals(sip_id, [terminal, ...])``, ``answering`` {sip_id: terminal}) ·
    ``commands.command(kind, call_id, tag, transport_id, callee)`` (what the API does) ·
    ``violations() -> [Violation]`` · ``quirks`` (:class:`Quirks`: ``leg_id``,
    ``trying_after_release``, ``list_total_extra``; what the document leaves open).
``SimCall``
    ``id``, ``tag``, ``transport_id``, ``type``, ``caller``, ``callee``, ``parked``, ``phase``
    (:class:`router.callmodel.Phase`), ``outcome`` (:class:`CallOutcome`: transferred, terminated,
    pbx_timeout, not_parked, forwarded, outgoing), ``command`` (the :class:`CommandRecord` that
    ended the parking: kind, workplace, received_at), ``commands`` (every command, each with its
    ``reason`` and ``verdict``: fine, reroute, violation), ``violations``, ``refused`` (not carried
    out, ``refusal``: unknown_call, gone, bad_params, fault), ``late``, ``terminal``,
    ``trying_sent_at`` / ``trying_sent_at_wall``, ``deadline``, ``decision_latency_s`` (first
    command received minus ``trying`` sent, monotonic), ``tried`` (workplaces rung), ``workplace``
    (who answered), ``notifications`` (each with ``state``, ``sent_at``, ``status``, ``payload``),
    ``states``; ``await wait_trying()``, ``await wait_outcome() -> CallOutcome``,
    ``await wait_done()`` (events, no polling).

Notifications are POSTed to ``webhook_url`` one at a time per call, each after the previous one
was answered (any status; failures are recorded, never retried). ``trying`` of a parked call
starts the parking window; the call is then transferred, terminated (PBX routes at once) or, at
the deadline, routed by the PBX: first free workplace of the number's route. A workplace that
does not answer within ``ring_timeout_ms`` (or declines first: ``decline_overrides``), or is on a
call, gets ``showing`` -> ``hiding`` and the PBX moves on; when nobody is left the call ends with
``finished`` (duration 0).

HTTP API
--------
OAuth: ``GET /oauth/authorize?response_type=code&client_id&redirect_uri&scope&state`` -> 302 to
``redirect_uri?code=..&state=..`` (no login page; bad client or redirect_uri -> 400 JSON);
``POST /oauth/token`` (form): ``authorization_code`` or ``refresh_token`` -> the document's five
keys; codes are single-use, refresh tokens rotate; bad grant -> 400 ``{"error": "invalid_grant"}``,
bad client -> 401 ``{"error": "invalid_client"}``.

API (Bearer; one path segment, any case): ``GET /externalNumbersInfo``, ``/workPlacesInfo``,
``/terminalsInfo``; ``POST /makeCall``, ``/terminateCall``, ``/transferCall``,
``/setParkingNumbers`` with ``{"params": {...}}``. Missing, unknown or expired token -> 401;
bad params -> 400; unknown call, or a call that is over -> 404. Every other transferCall/
terminateCall is carried out on whatever the call is doing (the document never says a late one
fails) and classified (:mod:`router.simulator.commands`): fine (parked, inside the window), reroute
(still ringing unanswered where a transfer sent it, or let go from there unanswered and with the
PBX) or violation (anything else: recorded, counted in ``/_sim/stats``, listed at
``/_sim/violations``). Errors are ``{"error": {"code": N, "message": "..."}}``.

Control (no auth): ``GET|POST /_sim/calls`` (POST ``{caller, callee, forwarders?, talk_ms?,
answer?: {sip_id: ms|null}, wait?: true}`` -> 201 ``{"call": {...}}``), ``GET /_sim/calls/{id}``,
``GET /_sim/requests[?endpoint=]``, ``GET /_sim/stats``, ``GET /_sim/violations``,
``GET|POST /_sim/quirks``, ``GET|PUT /_sim/webhook`` ``{url}``,
``GET /_sim/workplaces``, ``POST /_sim/workplaces/{id}`` ``{answer_after_ms?: N|null,
decline_after_ms?: N|null}`` (``{}``: as configured),
``POST /_sim/numbers`` ``{numbers}``, ``POST /_sim/vpbx`` ``{eventType}``,
``GET|POST|DELETE /_sim/faults``, ``POST /_sim/tokens``, ``POST /_sim/reset``.

``POST /_sim/faults`` body (every key optional)::

    {"clear": true,
     "endpoints": {"transferCall": {"latency_ms": 200, "status": 500, "drop": false,
                                    "after_apply": false, "retry_after_s": null,
                                    "rate": 1.0, "count": 3},
                   "*": {...}, "token": null},
     "storm_401": 5, "duplicate_trying": 1, "token_endpoint_down": 503 | "drop" | null,
     "revoke_access_tokens": true, "expire_access_tokens": true, "revoke_refresh_tokens": true}

An endpoint fault acts before the work (latency, then ``status`` or a dropped connection, and
nothing done) unless ``after_apply``: then the work is done and only its answer is delayed,
replaced by ``status`` or dropped (a gateway failing after MTT did it; a command so answered
leaves the call "maybe applied"). ``retry_after_s`` is sent with ``status`` as ``Retry-After``.
``storm_401`` counts requests, so a token refreshed mid-storm is refused too. ``GET`` answers the
same shape (:mod:`router.simulator.faults`).

Test fixtures (``tests/fixtures/sim.py``): ``sim_config`` (fast timings, window 0.5 s; override
it in a test module), ``sim`` (a served :class:`Simulator`), ``webhook_sink`` (a
``WebhookSink``: ``url``, ``received``, ``await wait_for(predicate)``, ``await wait_state(id,
state)``, ``states(id)``, ``status`` to answer), ``sim_http`` (a ClientSession); helper
``api_call(session, sim, method, name, token, params) -> (status, json)``.
"""

from __future__ import annotations

from router.simulator.app import create_sim_app, serve_simulator
from router.simulator.commands import CommandRefused
from router.simulator.config import Quirks, SimConfig, generated_workplaces
from router.simulator.core import SIM_KEY, Simulator
from router.simulator.faults import EndpointFault, Faults
from router.simulator.records import (
    CallOutcome,
    CallPhase,
    CommandRecord,
    NotificationRecord,
    Refusal,
    RequestRecord,
    SimCall,
    Violation,
)

__all__ = [
    "SIM_KEY",
    "CallOutcome",
    "CallPhase",
    "CommandRecord",
    "CommandRefused",
    "EndpointFault",
    "Faults",
    "NotificationRecord",
    "Quirks",
    "Refusal",
    "RequestRecord",
    "SimCall",
    "SimConfig",
    "Simulator",
    "Violation",
    "create_sim_app",
    "generated_workplaces",
    "serve_simulator",
]
