"""``mtt-router run``: the daemon."""

from __future__ import annotations

import argparse
import sys

from router import runtime
from router.commands._common import add_config_arg, load_config_or_exit
from router.daemon import serve
from router.logs import configure_logging


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
    configure_logging(config.log.format, config.log.level)
    try:
        return runtime.run(serve(config))
    except OSError as exc:
        # Binding a listener failed (port taken, address not local): one line, no traceback.
        print(
            f"cannot listen on {config.server.listen} / {config.server.admin_listen}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
