"""``mtt-router bench``: load the daemon with simulated calls and report latency, CPU and RSS.

By default everything is started here: the simulator in this process, the daemon as a
subprocess (memory storage, generated rules, tokens pre-seeded). ``--daemon-url``/``--admin-url``
bench a daemon already running instead; its ``oauth_url``/``api_url`` must point at
``--sim-listen`` (the bench authorises it through ``/oauth/start`` when needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router import runtime
from router.bench import BenchError, BenchSettings, run_bench
from router.bench.report import table
from router.commands._common import add_json_arg
from router.exits import Exit

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` command."""
    p = sub.add_parser(
        "bench",
        help="measure the daemon under simulated call load",
        description="Drive the MTT simulator's call generator against the daemon at a fixed "
        "rate, each call with its full notification lifecycle, and report calls routed and "
        "missed, decision latency at the simulator (p50/p90/p99/max), the daemon's CPU per "
        "routed call and its RSS. With --repeat, the medians.",
    )
    p.add_argument("--rate", type=float, default=100.0, help="calls per second (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--repeat", type=int, default=1, help="runs; medians are reported")
    p.add_argument("--workplaces", type=int, default=500, help="simulated workplaces (500)")
    p.add_argument("--callers", type=int, default=5000, help="distinct callers (5000)")
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the daemon's log level (default info, as in production)",
    )
    p.add_argument(
        "--daemon-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the daemon started here (auto: uvloop when installed)",
    )
    p.add_argument("--talk-ms", type=float, default=20.0, help="talk time of each call")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured warm-up")
    p.add_argument("--daemon-url", metavar="URL", help="events URL of a running daemon")
    p.add_argument("--admin-url", metavar="URL", help="admin URL of that daemon")
    p.add_argument("--daemon-pid", type=int, metavar="PID", help="its pid (default: found)")
    p.add_argument(
        "--sim-listen",
        metavar="HOST:PORT",
        help="where the simulator listens (default: any free port; 127.0.0.1:8900 with "
        "--daemon-url)",
    )
    p.add_argument("--workdir", metavar="DIR", help="keep the daemon's files and log here")
    p.add_argument(
        "--capture",
        action="store_true",
        help="turn log.capture on in the daemon started here (capture.jsonl beside its log), "
        "to measure what capturing costs",
    )
    add_json_arg(p)
    p.set_defaults(handler=run)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--sim-listen must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """The settings the flags describe; ``ValueError`` says what is wrong."""
    if args.rate <= 0 or args.duration <= 0 or args.repeat < 1:
        raise ValueError("--rate and --duration must be positive, --repeat at least 1")
    if args.workplaces < 1 or args.callers < 1:
        raise ValueError("--workplaces and --callers must be at least 1")
    if (args.daemon_url is None) != (args.admin_url is None):
        raise ValueError("--daemon-url and --admin-url go together")
    if args.capture and args.daemon_url is not None:
        raise ValueError("--capture applies to the daemon started here, not to --daemon-url")
    default_listen = "127.0.0.1:8900" if args.daemon_url else "127.0.0.1:0"
    return BenchSettings(
        rate=args.rate,
        duration_s=args.duration,
        repeat=args.repeat,
        workplaces=args.workplaces,
        callers=args.callers,
        log_level=args.log_level,
        talk_ms=args.talk_ms,
        warmup_s=max(0.0, args.warmup),
        daemon_url=args.daemon_url,
        admin_url=args.admin_url,
        daemon_pid=args.daemon_pid,
        daemon_loop=args.daemon_loop,
        sim_listen=_listen(args.sim_listen or default_listen),
        workdir=Path(args.workdir) if args.workdir else None,
        capture=args.capture,
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the bench; print a table (or JSON); exit 1 if any call was missed or it failed."""
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return Exit.USAGE
    try:
        report = runtime.run(run_bench(settings, progress=None if args.json else _progress))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return Exit.FAILED
    except OSError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return Exit.FAILED
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        rows = [(f"#{i + 1}", r.to_json()) for i, r in enumerate(report.runs)]
        if len(report.runs) > 1:
            rows.append(("median", report.median))
        print(table(rows))
    return Exit.OK
