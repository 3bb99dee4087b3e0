"""``mtt-router run``: the daemon."""

from __future__ import annotations

import argparse
import sys

from router import runtime
from router.commands._common import add_config_arg, load_config_or_exit
from router.daemon import serve
from router.errors import ListenError
from router.exits import Exit
from router.logs import setup_daemon_logging


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` command."""
    parser = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon. SIGTERM/SIGINT: graceful stop. SIGHUP: reload rules.",
    )
    add_config_arg(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    setup_daemon_logging(config.log.format, config.log.level, mask_numbers=config.log.mask_numbers)
    try:
        return runtime.run(serve(config, config_path=args.config))
    except ListenError as exc:
        print(exc, file=sys.stderr)  # port taken, address not local: one line, no traceback
        return Exit.FAILED
