"""The Open API endpoints and the middleware that records requests and injects faults.

Every API path is one segment and matches case-insensitively (the document writes both
``workPlacesInfo`` and ``workplacesInfo``). Errors answer ``{"error": {"code", "message"}}``, the
JSON-RPC style that ``{"params"}``/``{"result"}`` suggest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from router.simulator.commands import COMMANDS, CommandRefused
from router.simulator.core import SIM_KEY, Simulator
from router.simulator.faults import API_ENDPOINTS, CANONICAL, NO_FAULT, FaultAction
from router.simulator.records import RequestRecord
from router.simulator.wire import ApiErrorWire

Params = dict[str, Any]
ApiHandler = Callable[[Simulator, Params], Awaitable[Any]]


class BadParams(Exception):
    """The request's ``params`` are not what the endpoint takes; the message says why."""


def api_error(status: int, message: str) -> web.Response:
    """An API error answer."""
    body: ApiErrorWire = {"error": {"code": status, "message": message}}
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def endpoint_of(request: web.Request) -> str:
    """The endpoint name a request is for, spelt as in the document (or its path if unknown)."""
    path = request.path
    if path == "/oauth/token":
        return "token"
    if path == "/oauth/authorize":
        return "authorize"
    return CANONICAL.get(path.strip("/").lower(), path)


async def _body_for_log(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    if request.content_type == "application/x-www-form-urlencoded":
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


@web.middleware
async def mtt_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Record each OAuth/API request, then apply faults: latency, drop, 401 storm, status (before
    the work, or with ``after_apply`` to its answer)."""
    if request.path.startswith("/_sim/"):
        return await handler(request)
    sim = request.app[SIM_KEY]
    endpoint = endpoint_of(request)
    record = RequestRecord(
        method=request.method,
        path=request.path,
        endpoint=endpoint,
        query=dict(request.query),
        body=await _body_for_log(request),
        auth="Authorization" in request.headers,
        received_at=time.monotonic(),
        received_at_wall=time.time(),
    )
    sim.record_request(record)
    response: web.StreamResponse | None = None
    action = NO_FAULT
    if sim.faults.active:
        action = sim.faults.decide(endpoint)
        if not action.after_apply:
            if action.latency_s:
                await asyncio.sleep(action.latency_s)
            if endpoint in COMMANDS and (action.drop or action.status is not None):
                # MTT answered without carrying it out (a drop or a 5xx may look applied).
                sim.commands.unapplied(
                    COMMANDS[endpoint], record.body, None if action.drop else action.status
                )
            if action.drop:
                return _drop(request)
        if endpoint in API_ENDPOINTS and sim.faults.take_401():
            response = api_error(401, "access token is not valid (simulated 401 storm)")
        elif action.status is not None and not action.after_apply:
            response = _fault_answer(endpoint, action.status, action.retry_after_s)

    if response is None:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            record.status = exc.status
            raise
        if action.after_apply:
            return await _after_work(sim, request, record, action, response)
    record.status = response.status
    return response


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer (the request's record keeps status 0)."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp cannot write this to the closed transport and lets it go quietly.
    return web.Response(status=500)


async def _after_work(
    sim: Simulator,
    request: web.Request,
    record: RequestRecord,
    action: FaultAction,
    response: web.StreamResponse,
) -> web.StreamResponse:
    """The work is done (``response``): delay its answer, replace it or drop it."""
    if (action.drop or action.status is not None) and record.endpoint in COMMANDS:
        status = None if action.drop else action.status
        _answer_lost(sim, record.body, status, applied=response.status < 300)
    if action.latency_s:
        await asyncio.sleep(action.latency_s)
    if action.drop:
        return _drop(request)
    if action.status is not None:
        response = _fault_answer(record.endpoint, action.status, action.retry_after_s)
    record.status = response.status
    return response


def _answer_lost(sim: Simulator, body: Any, status: int | None, *, applied: bool) -> None:
    """A command went through the desk (``applied``: carried out) but the daemon got ``status``
    instead of its answer (``None``: nothing at all).

    The daemon cannot know it was applied: a later transfer of the call is not a re-route of its
    own (a second command is classified by what the call is doing), and after a 5xx or a drop
    the call is "maybe applied".
    """
    params = body.get("params") if isinstance(body, dict) else None
    ref = params.get("call") if isinstance(params, dict) else None
    call_id = ref.get("id") if isinstance(ref, dict) else None
    call = sim.call(call_id) if isinstance(call_id, str) else None
    if call is None:
        return
    if applied and call.commands:
        call.commands[-1].status = status or 0  # carried out; this is what the daemon got
        call.sent_to = None
    if status is None or status >= 500:
        call.maybe_applied = True


def _fault_answer(endpoint: str, status: int, retry_after_s: float | None = None) -> web.Response:
    if endpoint in ("token", "authorize"):
        error = "temporarily_unavailable" if status >= 500 else "invalid_request"
        response = web.json_response(
            {"error": error, "error_description": "simulated"}, status=status
        )
    else:
        response = api_error(status, "simulated fault")
    if retry_after_s is not None:
        response.headers["Retry-After"] = _seconds(retry_after_s)
    return response


def _seconds(value: float) -> str:
    """``Retry-After`` seconds: ``2`` for 2.0, ``0.5`` for 0.5 (HTTP has whole seconds only)."""
    return format(value, "f").rstrip("0").rstrip(".") or "0"


def _params(raw: bytes) -> Params:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadParams("body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("params"), dict):
        raise BadParams('body must be {"params": {...}}')
    params: Params = body["params"]
    return params


def _string(params: Params, key: str, where: str = "") -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise BadParams(f"params.{where}{key} must be a non-empty string")
    return value


async def external_numbers_info(sim: Simulator, params: Params) -> Any:
    """``GET /externalNumbersInfo``."""
    return {"result": sim.pbx.numbers_info(sim.quirks.list_total_extra)}


async def workplaces_info(sim: Simulator, params: Params) -> Any:
    """``GET /workPlacesInfo``."""
    return {"result": sim.pbx.workplaces_info(sim.quirks.list_total_extra)}


async def terminals_info(sim: Simulator, params: Params) -> Any:
    """``GET /terminalsInfo``."""
    return {"result": sim.pbx.terminals_info(sim.quirks.list_total_extra)}


async def make_call(sim: Simulator, params: Params) -> Any:
    """``POST /makeCall`` {callerId: workplace SIP ID, calleeId: number}."""
    caller, callee = _string(params, "callerId"), _string(params, "calleeId")
    try:
        call = sim.make_call(caller, callee)
    except ValueError as exc:
        raise BadParams(str(exc)) from None
    return {"result": {"call": {"id": call.id}, "success": 1}}


def _call_command(kind: str) -> ApiHandler:
    async def command(sim: Simulator, params: Params) -> Any:
        ref = params.get("call")
        if not isinstance(ref, dict):
            raise BadParams("params.call must be an object {id, tag}")
        call_id, tag = _string(ref, "id", "call."), _string(ref, "tag", "call.")
        transport = _string(params, "transportId")
        callee = _string(params, "calleeId") if kind == "transfer" else ""
        sim.commands.command(kind, call_id, tag, transport, callee)
        return {"result": {"success": 1}}

    command.__doc__ = f"``POST /{kind}Call``."
    return command


async def set_parking_numbers(sim: Simulator, params: Params) -> Any:
    """``POST /setParkingNumbers`` {numbers: [...], isParking: bool}; answers ``{"success": 1}``."""
    numbers = params.get("numbers")
    if not isinstance(numbers, list) or not numbers or not all(isinstance(n, str) for n in numbers):
        raise BadParams("params.numbers must be a non-empty list of strings")
    on = params.get("isParking")
    if not isinstance(on, bool):
        raise BadParams("params.isParking must be true or false")
    try:
        sim.set_parking(numbers, on)
    except ValueError as exc:
        raise BadParams(str(exc)) from None
    return {"success": 1}


HANDLERS: dict[str, tuple[str, ApiHandler]] = {
    "externalnumbersinfo": ("GET", external_numbers_info),
    "workplacesinfo": ("GET", workplaces_info),
    "terminalsinfo": ("GET", terminals_info),
    "makecall": ("POST", make_call),
    "terminatecall": ("POST", _call_command("terminate")),
    "transfercall": ("POST", _call_command("transfer")),
    "setparkingnumbers": ("POST", set_parking_numbers),
}


async def dispatch(request: web.Request) -> web.Response:
    """Route ``/<method>`` to its handler after the method and bearer checks."""
    sim = request.app[SIM_KEY]
    entry = HANDLERS.get(request.match_info["name"].lower())
    if entry is None:
        return api_error(404, f"no such method: {request.path}")
    method, handler = entry
    if request.method != method:
        return api_error(405, f"{request.path} takes {method}")
    if (problem := sim.tokens.check(request.headers.get("Authorization"))) is not None:
        return api_error(401, problem)
    try:
        params = _params(await request.read()) if method == "POST" else {}
        answer = await handler(sim, params)
    except BadParams as exc:
        return api_error(400, str(exc))
    except CommandRefused as exc:
        return api_error(exc.status, str(exc))
    if answer == _SUCCESS:
        return web.Response(body=_SUCCESS_BODY, content_type="application/json")
    return web.json_response(answer, dumps=_dumps)


_SUCCESS = {"result": {"success": 1}}
_SUCCESS_BODY = orjson.dumps(_SUCCESS)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def add_routes(app: web.Application) -> None:
    """Register every API method on ``/{name}``."""
    app.router.add_route("*", "/{name}", dispatch)
