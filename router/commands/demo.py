"""``mtt-router demo``: the simulator and the daemon routing a mix of calls, on loopback."""

from __future__ import annotations

import argparse
import sys

from router import demo
from router.exits import Exit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` command."""
    parser = sub.add_parser(
        "demo",
        help="run the simulator and the daemon together and route simulated calls",
        description=(
            "Start the built-in MTT simulator and the daemon (memory storage, example rules), "
            "place simulated client calls and print what happened to them. Needs no network "
            "beyond loopback, no Redis and no credentials."
        ),
    )
    parser.add_argument("--calls", type=int, default=40, help="how many calls (default 40)")
    parser.add_argument("--rate", type=float, default=5.0, help="calls per second (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.rate <= 0:
        print("demo: --calls must be >= 1 and --rate > 0", file=sys.stderr)
        return Exit.USAGE
    return demo.main(args.calls, args.rate, args.json)
