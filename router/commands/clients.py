"""``mtt-router clients set|del|get|import|count``: per-client edits in Redis (CRM sync);
``clients learned|forget``: what rules ``learn`` remembered (``commands/clients_learned.py``).

Each entry maps a caller's number to a personal manager id. With ``rules.source: redis`` and a
version pushed, manager ids are checked against those rules (an unknown one is refused, exit 1).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from router.commands import clients_learned
from router.commands._common import (
    add_config_arg,
    add_json_arg,
    fail,
    print_json,
    print_table,
)
from router.commands._groups import Subparsers, add_group
from router.commands._storage import current_rules, report_rules_error, run_storage
from router.config import Config
from router.errors import RulesError
from router.exits import Exit
from router.numbers import NumberError, normalize
from router.progress import Bar
from router.state.clients_csv import check_manager_id
from router.state.redis import RedisStores


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``clients`` command group."""
    actions = add_group(
        sub,
        "clients",
        help="per-client edits in Redis: caller number -> personal manager",
        description="Edit the caller -> personal manager map kept in Redis (storage: redis://); "
        "show or drop what rules `learn` remembered (either storage).",
    )

    p = actions.add_parser("set", help="make MANAGER the personal manager of NUMBER")
    p.add_argument("number", metavar="NUMBER", help="the client's number, in any format")
    p.add_argument("manager", metavar="MANAGER", help="a manager id from the rules")
    add_config_arg(p)
    p.set_defaults(storage_action=_set)

    p = actions.add_parser("del", help="forget NUMBER")
    p.add_argument("number", metavar="NUMBER", help="the client's number, in any format")
    add_config_arg(p)
    p.set_defaults(storage_action=_del)

    p = actions.add_parser("get", help="show the personal manager of NUMBER")
    p.add_argument("number", metavar="NUMBER", help="the client's number, in any format")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(storage_action=_get)

    p = actions.add_parser(
        "import",
        help="add NUMBER,MANAGER rows from a CSV file",
        description="Add NUMBER,MANAGER rows (',' ';' or tab separated; a header row, blank "
        "and '#' lines are skipped). Bad rows are reported as FILE:LINE: message and skipped.",
    )
    p.add_argument("file", metavar="FILE.csv", help="the CSV file (UTF-8)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace the whole map, atomically, and only if every row is valid",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(storage_action=_import)

    p = actions.add_parser("count", help="how many numbers the map holds")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(storage_action=_count)

    for action in ("set", "del", "get", "import", "count"):
        actions.choices[action].set_defaults(handler=_run)
    clients_learned.register(actions)


def _run(args: argparse.Namespace) -> int:
    return run_storage(args, partial(args.storage_action, args))


def _number(raw: str) -> str | None:
    try:
        return normalize(raw)
    except NumberError as exc:
        print(f"{exc}", file=sys.stderr)
        return None


async def _known_managers(config: Config, stores: RedisStores) -> frozenset[str] | int | None:
    """Manager ids of the pushed rules, ``None`` if there are none to check, or an exit code."""
    try:
        current = await current_rules(config, stores)
    except RulesError as exc:
        print("the rules in Redis do not load; push valid rules first:", file=sys.stderr)
        return report_rules_error(exc)
    return None if current is None else frozenset(current[1].managers)


async def _set(args: argparse.Namespace, config: Config, stores: RedisStores) -> int:
    number = _number(args.number)
    if number is None:
        return Exit.FAILED
    manager: str = args.manager
    try:
        check_manager_id(manager)
    except ValueError as exc:
        return fail(str(exc))
    known = await _known_managers(config, stores)
    if isinstance(known, int):
        return known
    if known is not None and manager not in known:
        return fail(
            f"unknown manager {manager!r} (the rules in Redis have: {', '.join(sorted(known))})"
        )
    await stores.clients.set(number, manager)
    print(f"{number} -> {manager}")
    return Exit.OK


async def _del(args: argparse.Namespace, config: Config, stores: RedisStores) -> int:
    number = _number(args.number)
    if number is None:
        return Exit.FAILED
    if not await stores.clients.delete(number):
        return fail(f"{number}: not in the map")
    print(f"{number}: deleted")
    return Exit.OK


async def _get(args: argparse.Namespace, config: Config, stores: RedisStores) -> int:
    number = _number(args.number)
    if number is None:
        return Exit.FAILED
    manager = await stores.clients.get(number)
    if args.json:
        print_json({"number": number, "manager": manager})
    elif manager is not None:
        print_table(("NUMBER", "MANAGER"), [(number, manager)])
    else:
        print(f"{number}: no personal manager in the map", file=sys.stderr)
    return Exit.OK if manager is not None else Exit.FAILED


async def _import(args: argparse.Namespace, config: Config, stores: RedisStores) -> int:
    known = await _known_managers(config, stores)
    if isinstance(known, int):
        return known
    started = time.monotonic()
    try:
        # On a terminal, a bar on stderr while the rows go in (erased when done).
        with Bar(f"import {Path(args.file).name}", _size(args.file)) as bar:
            result = await stores.clients.import_csv(
                args.file,
                managers=known,
                replace=args.replace,
                progress=bar.update if bar.drawn else None,
            )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return fail(f"{args.file}: cannot read: {getattr(exc, 'strerror', None) or exc}")
    elapsed_s = time.monotonic() - started
    if args.json:
        out: dict[str, Any] = {
            "file": args.file,
            "imported": result.imported,
            "added": result.added,
            "bad_rows": result.bad_rows,
            "problems": [{"line": line, "message": msg} for line, msg in result.problems],
            "replaced": result.replaced,
            "seconds": round(elapsed_s, 3),
        }
        print_json(out)
    else:
        for line, message in result.problems:
            print(f"{args.file}:{line}: {message}")
        if result.bad_rows > len(result.problems):
            print(f"{args.file}: ... and {result.bad_rows - len(result.problems)} more bad rows")
        if args.replace and not result.replaced:
            print(f"{args.file}: not imported: --replace needs every row valid", file=sys.stderr)
        else:
            verb = "replaced the map with" if result.replaced else "imported"
            print(
                f"{args.file}: {verb} {result.imported} rows ({result.added} new numbers, "
                f"{result.bad_rows} bad rows skipped) in {elapsed_s:.1f} s",
                file=sys.stderr,
            )
    return Exit.OK if result.bad_rows == 0 else Exit.FAILED


def _size(path: str) -> float | None:
    try:
        return float(max(1, Path(path).stat().st_size))
    except OSError:
        return None  # the import says what is wrong with it


async def _count(args: argparse.Namespace, config: Config, stores: RedisStores) -> int:
    count = await stores.clients.count()
    if args.json:
        print_json({"count": count})
    else:
        print(count)
    return Exit.OK
