"""``mtt-router pbx numbers|workplaces|terminals|park`` and ``mtt-router call``.

Look at the PBX (external numbers, workplaces and their SIP IDs, terminals), switch parking of
external numbers on or off (``setParkingNumbers``), and place a call from a workplace
(``makeCall``). Tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Awaitable, Callable
from functools import partial

from router.commands._common import (
    MttContext,
    add_config_arg,
    add_json_arg,
    print_json,
    print_table,
    run_mtt,
)
from router.commands._groups import Subparsers, add_group
from router.exits import Exit
from router.numbers import try_normalize

Show = Callable[[MttContext, bool], Awaitable[int]]


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``pbx`` group and the top-level ``call`` command."""
    actions = add_group(
        sub,
        "pbx",
        help="look at the MTT PBX and switch parking",
        description="List the PBX's external numbers, workplaces and terminals; switch parking.",
    )
    lists: tuple[tuple[str, str, Show], ...] = (
        ("numbers", "external numbers (externalNumbersInfo)", _numbers),
        ("workplaces", "workplaces and their SIP IDs (workPlacesInfo)", _workplaces),
        ("terminals", "terminals and their workplaces (terminalsInfo)", _terminals),
    )
    for name, text, show in lists:
        action = actions.add_parser(name, help=text, description=f"List the {text}.")
        add_config_arg(action)
        add_json_arg(action)
        action.set_defaults(handler=partial(_run, show))

    park = actions.add_parser(
        "park",
        help="put external numbers on parking (on) or take them off (off)",
        description="setParkingNumbers: while on parking, an incoming call waits 5 s for the "
        "router's decision before the PBX routes it its usual way.",
    )
    park.add_argument("mode", choices=("on", "off"))
    park.add_argument("numbers", nargs="+", metavar="NUMBER")
    add_config_arg(park)
    add_json_arg(park)
    park.set_defaults(handler=_park)

    call = sub.add_parser(
        "call",
        help="ring a workplace, then connect it to a number (makeCall)",
        description="makeCall: the PBX rings CALLER_WORKPLACE (a workplace SIP ID, see "
        "`pbx workplaces`); once it answers, it calls CALLEE and joins the two.",
    )
    call.add_argument("caller", metavar="CALLER_WORKPLACE")
    call.add_argument("callee", metavar="CALLEE")
    add_config_arg(call)
    add_json_arg(call)
    call.set_defaults(handler=_call)


def _run(show: Show, args: argparse.Namespace) -> int:
    return run_mtt(args, partial(_bound, show, args.json))


async def _bound(show: Show, as_json: bool, ctx: MttContext) -> int:
    return await show(ctx, as_json)


async def _numbers(ctx: MttContext, as_json: bool) -> int:
    numbers = await ctx.client.external_numbers()
    if as_json:
        print_json([dataclasses.asdict(n) for n in numbers])
    else:
        print_table(("NUMBER", "TYPE"), [(n.number, n.type) for n in numbers])
    return Exit.OK


async def _workplaces(ctx: MttContext, as_json: bool) -> int:
    workplaces = await ctx.client.workplaces()
    if as_json:
        print_json([dataclasses.asdict(w) for w in workplaces])
    else:
        print_table(("WORKPLACE", "NAME"), [(w.workplace, w.name) for w in workplaces])
    return Exit.OK


async def _terminals(ctx: MttContext, as_json: bool) -> int:
    terminals = await ctx.client.terminals()
    if as_json:
        print_json([dataclasses.asdict(t) for t in terminals])
    else:
        print_table(("TERMINAL", "WORKPLACE"), [(t.terminal, t.workplace) for t in terminals])
    return Exit.OK


def _park(args: argparse.Namespace) -> int:
    # MTT lists numbers as E.164 digits; accept "+7 (800) 556-02-51" or "8800..." too, and pass
    # anything we cannot read as typed (MTT's answer will say what is wrong with it).
    numbers = [try_normalize(raw) or raw for raw in args.numbers]
    return run_mtt(args, partial(_set_parking, numbers, args.mode == "on", args.json))


async def _set_parking(numbers: list[str], on: bool, as_json: bool, ctx: MttContext) -> int:
    await ctx.client.set_parking(numbers, on)
    if as_json:
        print_json({"numbers": numbers, "parking": on, "success": True})
    else:
        print(f"Parking {'on' if on else 'off'}: {', '.join(numbers)}")
    return Exit.OK


def _call(args: argparse.Namespace) -> int:
    return run_mtt(args, partial(_make_call, args.caller, args.callee, args.json))


async def _make_call(caller: str, callee: str, as_json: bool, ctx: MttContext) -> int:
    call_id = await ctx.client.make_call(caller, callee)
    if as_json:
        print_json({"call_id": call_id, "caller": caller, "callee": callee})
    else:
        print(f"Calling {callee} from workplace {caller}: call id {call_id}")
    return Exit.OK
