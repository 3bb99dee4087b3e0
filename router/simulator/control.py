"""``/_sim/*``: drive and inspect the simulator over HTTP (for ``mtt-router simulate`` users).

No auth: the simulator is a test double that listens on loopback.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from router.simulator.core import SIM_KEY, Simulator


class _Bad(Exception):
    """A control request we cannot carry out; answered 400 with the message."""


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _object(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise _Bad("body is not JSON") from None
    if not isinstance(body, dict):
        raise _Bad("body must be a JSON object")
    return body


def _sim(request: web.Request) -> Simulator:
    return request.app[SIM_KEY]


def _ms(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _Bad(f"{key} must be a non-negative number of milliseconds or null")
    return float(value)


def _answers(value: Any) -> dict[str, float | None]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad("answer must be an object {workplace: after_ms or null}")
    return {str(w): _ms(ms, f"answer.{w}") for w, ms in value.items()}


async def list_calls(request: web.Request) -> web.Response:
    """``GET /_sim/calls[?limit=N]``: newest last."""
    calls = _sim(request).calls()
    limit = request.query.get("limit", "")
    if limit.isdigit():
        calls = calls[-int(limit) :] if int(limit) else []
    return web.json_response({"calls": [c.to_json() for c in calls]})


async def place_call(request: web.Request) -> web.Response:
    """``POST /_sim/calls`` {caller, callee, forwarders?, talk_ms?, answer?, wait?}."""
    sim = _sim(request)
    try:
        body = await _object(request)
        caller, callee = body.get("caller"), body.get("callee")
        if not isinstance(caller, str) or not isinstance(callee, str):
            raise _Bad("caller and callee must be strings")
        forwarders = body.get("forwarders") or []
        if not isinstance(forwarders, list) or not all(isinstance(f, str) for f in forwarders):
            raise _Bad("forwarders must be a list of strings")
        call = sim.start_call(
            caller,
            callee,
            forwarders=forwarders,
            talk_ms=_ms(body.get("talk_ms"), "talk_ms"),
            answer=_answers(body.get("answer")),
        )
    except (_Bad, ValueError) as exc:
        return _bad(str(exc))
    if body.get("wait", True):
        await call.wait_trying()
    return web.json_response({"call": call.to_json()}, status=201)


async def get_call(request: web.Request) -> web.Response:
    """``GET /_sim/calls/{id}``."""
    call = _sim(request).call(request.match_info["id"])
    if call is None:
        return _bad("no such call", 404)
    return web.json_response({"call": call.to_json()})


async def list_requests(request: web.Request) -> web.Response:
    """``GET /_sim/requests[?endpoint=transferCall]``."""
    records = _sim(request).requests_to(request.query.get("endpoint"))
    return web.json_response({"requests": [r.to_json() for r in records]})


async def stats(request: web.Request) -> web.Response:
    """``GET /_sim/stats``."""
    return web.json_response(_sim(request).stats())


async def list_violations(request: web.Request) -> web.Response:
    """``GET /_sim/violations``: commands that may have acted on a live call, oldest first."""
    return web.json_response({"violations": [v.to_json() for v in _sim(request).violations()]})


async def get_quirks(request: web.Request) -> web.Response:
    """``GET /_sim/quirks``."""
    return web.json_response(dataclasses.asdict(_sim(request).quirks))


async def set_quirks(request: web.Request) -> web.Response:
    """``POST /_sim/quirks`` {leg_id?, trying_after_release?, list_total_extra?}."""
    sim = _sim(request)
    try:
        sim.quirks.update(await _object(request))
    except (_Bad, ValueError) as exc:
        return _bad(str(exc))
    return web.json_response(dataclasses.asdict(sim.quirks))


async def get_webhook(request: web.Request) -> web.Response:
    """``GET /_sim/webhook``."""
    return web.json_response({"url": _sim(request).webhook_url})


async def set_webhook(request: web.Request) -> web.Response:
    """``PUT /_sim/webhook`` {url: "http://.../events" or null}."""
    try:
        url = (await _object(request)).get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith("http")):
            raise _Bad("url must be an http(s) URL or null")
    except _Bad as exc:
        return _bad(str(exc))
    _sim(request).webhook_url = url
    return web.json_response({"url": url})


async def list_workplaces(request: web.Request) -> web.Response:
    """``GET /_sim/workplaces``: names, answer behaviour, who is on a call."""
    pbx = _sim(request).pbx
    rows = [
        {
            "workplace": w,
            "name": name,
            "answer_after_ms": pbx.answer_after_ms(w),
            "decline_after_ms": pbx.decline_after_ms(w),
            "terminals": pbx.terminals_of(w),
            "answering_terminal": pbx.answering_terminal(w),
            "busy": pbx.is_busy(w),
        }
        for w, name in pbx.workplaces.items()
    ]
    return web.json_response({"workplaces": rows})


async def set_workplace(request: web.Request) -> web.Response:
    """``POST /_sim/workplaces/{id}`` {answer_after_ms?: N or null (never), decline_after_ms?:
    N or null (does not)} or {} (both as configured)."""
    sim = _sim(request)
    workplace = request.match_info["id"]
    if workplace not in sim.pbx.workplaces:
        return _bad("no such workplace", 404)
    try:
        body = await _object(request)
        answer = _ms(body.get("answer_after_ms"), "answer_after_ms")
        declines = _ms(body.get("decline_after_ms"), "decline_after_ms")
    except _Bad as exc:
        return _bad(str(exc))
    if "answer_after_ms" in body:
        sim.set_answer(workplace, answer)
    if "decline_after_ms" in body:
        sim.set_decline(workplace, declines)
    if "answer_after_ms" not in body and "decline_after_ms" not in body:
        sim.pbx.clear_answer(workplace)
        sim.set_decline(workplace, sim.config.decline_overrides.get(workplace))
    pbx = sim.pbx
    return web.json_response(
        {
            "workplace": workplace,
            "answer_after_ms": pbx.answer_after_ms(workplace),
            "decline_after_ms": pbx.decline_after_ms(workplace),
        }
    )


async def set_numbers(request: web.Request) -> web.Response:
    """``POST /_sim/numbers`` {numbers: [...], notify?: true}: then ``numbersChanged``."""
    try:
        body = await _object(request)
        numbers = body.get("numbers")
        if (
            not isinstance(numbers, list)
            or not numbers
            or not all(isinstance(n, str) for n in numbers)
        ):
            raise _Bad("numbers must be a non-empty list of strings")
    except _Bad as exc:
        return _bad(str(exc))
    await _sim(request).set_numbers(numbers, notify=bool(body.get("notify", True)))
    return web.json_response({"numbers": numbers})


async def notify_vpbx(request: web.Request) -> web.Response:
    """``POST /_sim/vpbx`` {eventType: "numbersChanged" | "workplacesChanged"}."""
    try:
        event_type = (await _object(request)).get("eventType")
        if not isinstance(event_type, str) or not event_type:
            raise _Bad("eventType must be a string")
    except _Bad as exc:
        return _bad(str(exc))
    sent = await _sim(request).notify_vpbx(event_type)
    return web.json_response({"notification": sent.to_json()})


async def get_faults(request: web.Request) -> web.Response:
    """``GET /_sim/faults``."""
    return web.json_response(_sim(request).faults.to_json())


async def set_faults(request: web.Request) -> web.Response:
    """``POST /_sim/faults``: fault settings plus one-off token actions (see package docs)."""
    sim = _sim(request)
    try:
        body = await _object(request)
        sim.faults.update(body)
    except (_Bad, ValueError) as exc:
        return _bad(str(exc))
    done: dict[str, int] = {}
    if body.get("revoke_access_tokens"):
        done["revoked_access_tokens"] = sim.revoke_access_tokens()
    if body.get("expire_access_tokens"):
        done["expired_access_tokens"] = sim.expire_access_tokens()
    if body.get("revoke_refresh_tokens"):
        done["revoked_refresh_tokens"] = sim.revoke_refresh_tokens()
    return web.json_response({**sim.faults.to_json(), "done": done})


async def clear_faults(request: web.Request) -> web.Response:
    """``DELETE /_sim/faults``."""
    sim = _sim(request)
    sim.faults.clear()
    return web.json_response(sim.faults.to_json())


async def issue_tokens(request: web.Request) -> web.Response:
    """``POST /_sim/tokens``: a valid token answer without the OAuth dance."""
    return web.json_response(_sim(request).issue_tokens())


async def reset(request: web.Request) -> web.Response:
    """``POST /_sim/reset``: back to the configured state."""
    await _sim(request).reset()
    return web.json_response({"reset": True})


def add_routes(app: web.Application) -> None:
    """Register ``/_sim/*``."""
    r = app.router
    r.add_get("/_sim/calls", list_calls)
    r.add_post("/_sim/calls", place_call)
    r.add_get("/_sim/calls/{id}", get_call)
    r.add_get("/_sim/requests", list_requests)
    r.add_get("/_sim/stats", stats)
    r.add_get("/_sim/violations", list_violations)
    r.add_get("/_sim/quirks", get_quirks)
    r.add_post("/_sim/quirks", set_quirks)
    r.add_get("/_sim/webhook", get_webhook)
    r.add_put("/_sim/webhook", set_webhook)
    r.add_post("/_sim/webhook", set_webhook)
    r.add_get("/_sim/workplaces", list_workplaces)
    r.add_post("/_sim/workplaces/{id}", set_workplace)
    r.add_post("/_sim/numbers", set_numbers)
    r.add_post("/_sim/vpbx", notify_vpbx)
    r.add_get("/_sim/faults", get_faults)
    r.add_post("/_sim/faults", set_faults)
    r.add_delete("/_sim/faults", clear_faults)
    r.add_post("/_sim/tokens", issue_tokens)
    r.add_post("/_sim/reset", reset)
