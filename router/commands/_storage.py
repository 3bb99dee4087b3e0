"""What the commands that edit Redis directly (``clients``, ``rules push|pull``) share."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from router.commands._common import fail, load_config_or_exit
from router.config import Config
from router.errors import RulesError, StorageError
from router.exits import Exit
from router.logs import setup_cli_logging
from router.metrics import Metrics
from router.rules.loader import load_rules
from router.rules.model import Rules
from router.state.redis import RedisStores, open_redis_stores
from router.state.redis_conn import redact_url

StorageAction = Callable[[Config, RedisStores], Awaitable[int]]


def run_storage(args: argparse.Namespace, action: StorageAction) -> int:
    """Load ``--config``, insist on Redis storage, run ``action`` with the stores open."""
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    if not config.uses_redis:
        return fail(
            f"storage: this command edits Redis, but {args.config} has storage: "
            f"{config.storage!r} (set a redis:// URL)",
            Exit.USAGE,
        )
    # Errors only: the command reports a storage failure itself, in one line.
    setup_cli_logging("error")
    return asyncio.run(_guarded(config, action))


async def _guarded(config: Config, action: StorageAction) -> int:
    stores = await open_redis_stores(config, Metrics(), role="cli")
    try:
        return await action(config, stores)
    except StorageError as exc:
        return fail(f"storage: {redact_url(config.storage)}: {exc}")
    finally:
        await stores.aclose()


async def current_rules(config: Config, stores: RedisStores) -> tuple[int, Rules] | None:
    """The pushed rules when ``rules.source`` is redis and a version exists, else ``None``.

    Raises :class:`RulesError` if the stored text does not load (a newer or older loader).
    """
    if config.rules.source != "redis":
        return None
    pulled = await stores.rules.pull()
    if pulled is None:
        return None
    where = f"redis rules version {pulled.version}"
    return pulled.version, load_rules(pulled.text, where, clients_text=pulled.clients)


def report_rules_error(exc: RulesError) -> int:
    """Print each problem of ``exc`` on stderr; :attr:`Exit.FAILED`."""
    for line in exc.lines():
        print(line, file=sys.stderr)
    return Exit.FAILED
