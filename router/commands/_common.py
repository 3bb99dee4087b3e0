"""What every command that talks to MTT or the storage shares: arguments, config, output, exits.

Exit codes are :class:`router.exits.Exit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.config import Config, load_config
from router.errors import ConfigError, NeedsLoginError, RouterError, UpstreamError
from router.exits import Exit
from router.logs import setup_cli_logging
from router.metrics import Metrics
from router.mtt.auth import TokenManager
from router.mtt.client import MttClient, make_session
from router.mtt.oauth import OAuthClient
from router.state.factory import Stores, open_stores

DEFAULT_CONFIG = "config.yaml"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` (default ``config.yaml`` in the working directory)."""
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output instead of a table."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load_config_or_exit(path: str) -> Config | int:
    """The validated config, or :attr:`Exit.USAGE` after printing each problem on stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return Exit.USAGE


def print_json(data: Any) -> None:
    """Pretty JSON on stdout (UTF-8 as is: workplace names are Russian)."""
    print(json.dumps(data, ensure_ascii=False, indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout; ``-`` for empty cells."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fail(message: str, code: int = Exit.FAILED) -> int:
    """Print ``message`` on stderr and return ``code``."""
    print(message, file=sys.stderr)
    return code


@dataclass
class MttContext:
    """What a command needs to talk to MTT, opened by :func:`open_mtt` and closed after it."""

    config: Config
    config_path: str
    metrics: Metrics
    session: aiohttp.ClientSession
    stores: Stores
    tokens: TokenManager
    client: MttClient


@contextlib.asynccontextmanager
async def open_mtt(config: Config, config_path: str) -> AsyncIterator[MttContext]:
    """Session, stores and a token manager loaded from the store (no background refresher)."""
    metrics = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        session = make_session()
        stack.push_async_callback(session.close)
        stores = await open_stores(config, metrics)
        stack.push_async_callback(stores.aclose)
        tokens = TokenManager(
            OAuthClient(session, config.mtt, metrics), stores.tokens, stores.states, metrics
        )
        stack.push_async_callback(tokens.close)
        await tokens.load()
        client = MttClient(session, config.mtt.api_url, tokens, metrics)
        yield MttContext(config, config_path, metrics, session, stores, tokens, client)


Action = Callable[[MttContext], Awaitable[int]]


def run_mtt(args: argparse.Namespace, action: Action) -> int:
    """Load the config, set up logging, run ``action`` with an open :class:`MttContext`."""
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    setup_cli_logging(config.log.level)
    return asyncio.run(_guarded(config, args.config, action))


async def _guarded(config: Config, config_path: str, action: Action) -> int:
    try:
        async with open_mtt(config, config_path) as ctx:
            return await action(ctx)
    except NeedsLoginError:
        return fail(f"not authorised with MTT: run `mtt-router auth login --config {config_path}`")
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return Exit.USAGE
    except UpstreamError as exc:
        return fail(f"MTT: {exc}")
    except (RouterError, OSError) as exc:
        return fail(f"failed: {exc}")
