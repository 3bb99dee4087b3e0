"""``mtt-router clients learned|forget NUMBER``: what rules ``learn`` remembered for a caller.

Works with either storage: Redis (shared by the replicas, effective at once) or memory (the
file ``<tokens_file>.learned.json`` beside the tokens; a running daemon writes what it learned
within seconds and follows a ``forget`` within about a second).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

from router.commands._common import (
    add_config_arg,
    add_json_arg,
    fail,
    load_config_or_exit,
    print_json,
    print_table,
)
from router.commands._groups import Subparsers
from router.config import Config
from router.errors import StorageError
from router.exits import Exit
from router.logs import setup_cli_logging
from router.metrics import Metrics
from router.numbers import NumberError, normalize
from router.state.learned_file import LearnedFile, learned_path
from router.state.protocols import LearnedStore
from router.state.redis import open_redis_stores
from router.state.redis_conn import redact_url

Action = Callable[[LearnedStore, str], Awaitable[int]]


def register(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``learned`` and ``forget`` to the ``clients`` group."""
    p = actions.add_parser(
        "learned",
        help="show the manager learned for NUMBER (rules learn)",
        description="Show the manager NUMBER last talked to long enough (rules `learn`), when "
        "that was learned and when it expires. Exit 1 when nothing is learned for NUMBER.",
    )
    p.add_argument("number", metavar="NUMBER", help="the caller's number, in any format")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=partial(_run, _learned))

    p = actions.add_parser(
        "forget",
        help="drop what was learned for NUMBER",
        description="Drop the learned manager of NUMBER: his next call is decided as if he "
        "never called (a conversation after that teaches again).",
    )
    p.add_argument("number", metavar="NUMBER", help="the caller's number, in any format")
    add_config_arg(p)
    p.set_defaults(handler=partial(_run, _forget))


def _run(
    action: Callable[[argparse.Namespace, LearnedStore, str], Awaitable[int]],
    args: argparse.Namespace,
) -> int:
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    try:
        number = normalize(args.number)
    except NumberError as exc:
        return fail(str(exc))
    setup_cli_logging("error")
    return asyncio.run(_guarded(config, partial(action, args), number))


async def _guarded(config: Config, action: Action, number: str) -> int:
    try:
        if config.uses_redis:
            stores = await open_redis_stores(config, Metrics(), role="cli")
            try:
                return await action(stores.learned, number)
            finally:
                await stores.aclose()
        learned = LearnedFile(learned_path(config.tokens_file))
        await asyncio.to_thread(learned.load)
        return await action(learned, number)
    except StorageError as exc:
        where = redact_url(config.storage) if config.uses_redis else "memory"
        return fail(f"storage: {where}: {exc}")
    except OSError as exc:
        return fail(f"{learned_path(config.tokens_file)}: {exc.strerror or exc}")


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s).astimezone().isoformat(timespec="seconds")


async def _learned(args: argparse.Namespace, store: LearnedStore, number: str) -> int:
    entry = await store.get(number)
    if args.json:
        print_json(
            {
                "number": number,
                "manager": entry.manager if entry is not None else None,
                "learned_at": _when(entry.learned_at) if entry is not None else None,
                "expires_at": _when(entry.expires_at) if entry is not None else None,
            }
        )
    elif entry is not None:
        print_table(
            ("NUMBER", "MANAGER", "LEARNED", "EXPIRES"),
            [(number, entry.manager, _when(entry.learned_at), _when(entry.expires_at))],
        )
    else:
        print(f"{number}: nothing learned", file=sys.stderr)
    return Exit.OK if entry is not None else Exit.FAILED


async def _forget(args: argparse.Namespace, store: LearnedStore, number: str) -> int:
    if not await store.forget(number):
        return fail(f"{number}: nothing learned")
    print(f"{number}: forgotten")
    return Exit.OK
