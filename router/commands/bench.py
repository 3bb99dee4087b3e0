"""``mtt-router bench``: load the daemon with simulated calls and report latency, CPU and RSS.

By default everything is started here: the simulator in this process, the daemon as a
subprocess (memory storage, generated rules, tokens pre-seeded). ``--daemon-url``/``--admin-url``
bench a daemon already running instead; its ``oauth_url``/``api_url`` must point at
``--sim-listen`` (the bench authorises it through ``/oauth/start`` when needed).

``--soak`` runs minutes at a steady rate and reports the daemon's RSS, open FDs, tasks and maps
at the start and the end (:mod:`router.bench.soak`); ``--flood N`` posts N forged notifications
while real calls flow (:mod:`router.bench.flood`); ``--clients-file N`` loads an N-row
``clients_file`` and reloads it under load (:mod:`router.bench.clients_file`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router import runtime
from router.bench import BenchError, BenchSettings, run_bench
from router.bench.clients_file import ClientsFileSettings, run_clients_file
from router.bench.clients_report import ClientsFileReport
from router.bench.flood import MAX_INFLIGHT, FloodReport, FloodSettings, run_flood
from router.bench.forged import CONCURRENCY
from router.bench.redis_probe import RedisProbeError
from router.bench.report import table
from router.bench.soak import SoakReport, SoakSettings, run_soak
from router.commands._common import add_json_arg
from router.exits import Exit
from router.logs import setup_cli_logging
from router.progress import Bar

LOG_LEVELS = ("debug", "info", "warning", "error")
SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")

DEFAULTS = {
    # mode: rate, duration (s), talk (ms), warm-up (s)
    "bench": (100.0, 10.0, 20.0, 1.0),
    "soak": (20.0, 300.0, 2000.0, 10.0),
    "flood": (20.0, 0.0, 200.0, 2.0),
    "clients": (100.0, 30.0, 20.0, 1.0),
}


def duration(text: str) -> float:
    """Seconds from ``300``, ``300s``, ``5m`` or ``2.5min``."""
    value = text.strip().lower()
    for suffix, scale in (("min", 60.0), ("m", 60.0), ("s", 1.0)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], scale
            break
    else:
        factor = 1.0
    try:
        return float(value) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 300, 300s, 5m)") from None


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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--soak",
        action="store_true",
        help="minutes at a steady rate with whole call lifecycles (answered, released, not "
        "answered); the daemon's RSS, open FDs, asyncio tasks and maps at start and end, the "
        "drift, and a reading every --sample-every s (in --json)",
    )
    mode.add_argument(
        "--flood",
        type=int,
        metavar="N",
        help="post N forged trying notifications (every field at its longest) while real calls "
        "flow: posts/s, real calls' decision latency, the daemon's RSS before/peak/after",
    )
    mode.add_argument(
        "--clients-file",
        type=int,
        metavar="N",
        help="the daemon on rules format 2 with an N-row clients_file: its load time, decision "
        "latency without a reload and while the CSV is touched after every reload (--duration "
        "each, default 30 s), its RSS before, loaded and after",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="--clients-file: also rounds in which another process does the same load while the "
        "daemon does none (what that CPU work costs decisions on this machine by itself)",
    )
    p.add_argument(
        "--rate",
        type=float,
        help="calls per second (default 100; --soak and --flood: 20 real calls/s)",
    )
    p.add_argument(
        "--duration",
        type=duration,
        help="seconds per run, or minutes with 'm' (default 10; --soak: 300)",
    )
    p.add_argument(
        "--sample-every", type=float, default=10.0, help="--soak: seconds between readings (10)"
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        help=f"server.max_inflight of the daemon started here (--flood: {MAX_INFLIGHT})",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"--flood: connections posting at once ({CONCURRENCY})",
    )
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
    p.add_argument(
        "--talk-ms", type=float, help="talk time of each call (20; --soak 2000, --flood 200)"
    )
    p.add_argument(
        "--warmup", type=float, help="seconds of unmeasured warm-up (1; --soak 10, --flood 2)"
    )
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
        "--storage",
        default="memory",
        metavar="memory|redis|URL",
        help="the daemon's storage: memory (default); redis: a throwaway redis-server started "
        "here (free port, temporary directory); or a Redis URL (keys under a prefix of the "
        "bench's own, deleted afterwards; with --daemon-url: that daemon's Redis, measured "
        "only). With Redis the table adds Redis CPU, commands and round trips per call",
    )
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


def mode_of(args: argparse.Namespace) -> str:
    """``bench``, ``soak``, ``flood`` or ``clients``."""
    if args.clients_file is not None:
        return "clients"
    return "soak" if args.soak else "flood" if args.flood is not None else "bench"


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """The settings the flags describe; ``ValueError`` says what is wrong."""
    mode = mode_of(args)
    rate, length, talk_ms, warmup = DEFAULTS[mode]
    rate = rate if args.rate is None else args.rate
    length = length if args.duration is None else args.duration
    if rate <= 0 or (mode != "flood" and length <= 0) or args.repeat < 1:
        raise ValueError("--rate and --duration must be positive, --repeat at least 1")
    if args.flood is not None and args.flood < 1:
        raise ValueError("--flood needs at least 1 notification")
    if args.clients_file is not None and args.clients_file < 1:
        raise ValueError("--clients-file needs at least 1 row")
    if args.control and args.clients_file is None:
        raise ValueError("--control goes with --clients-file")
    if args.sample_every <= 0 or args.concurrency < 1:
        raise ValueError("--sample-every must be positive, --concurrency at least 1")
    if args.max_inflight is not None and args.max_inflight < 1:
        raise ValueError("--max-inflight must be at least 1")
    if args.workplaces < 1 or args.callers < 1:
        raise ValueError("--workplaces and --callers must be at least 1")
    if (args.daemon_url is None) != (args.admin_url is None):
        raise ValueError("--daemon-url and --admin-url go together")
    if args.capture and args.daemon_url is not None:
        raise ValueError("--capture applies to the daemon started here, not to --daemon-url")
    if args.storage not in ("memory", "redis") and not args.storage.startswith(SCHEMES):
        raise ValueError(f"--storage must be memory, redis or a Redis URL ({', '.join(SCHEMES)})")
    if args.storage == "redis" and args.daemon_url is not None:
        raise ValueError(
            "--storage redis starts a Redis for the daemon started here; with "
            "--daemon-url give that daemon's Redis URL"
        )
    default_listen = "127.0.0.1:8900" if args.daemon_url else "127.0.0.1:0"
    max_inflight = args.max_inflight
    if mode == "flood" and max_inflight is None and args.daemon_url is None:
        max_inflight = MAX_INFLIGHT
    return BenchSettings(
        rate=rate,
        duration_s=length,
        repeat=args.repeat,
        workplaces=args.workplaces,
        callers=args.callers,
        log_level=args.log_level,
        talk_ms=talk_ms if args.talk_ms is None else args.talk_ms,
        warmup_s=max(0.0, warmup if args.warmup is None else args.warmup),
        daemon_url=args.daemon_url,
        admin_url=args.admin_url,
        daemon_pid=args.daemon_pid,
        daemon_loop=args.daemon_loop,
        sim_listen=_listen(args.sim_listen or default_listen),
        workdir=Path(args.workdir) if args.workdir else None,
        capture=args.capture,
        max_inflight=max_inflight,
        storage=args.storage,
    )


def expected_s(settings: BenchSettings, mode: str) -> float | None:
    """How long the measured work should take (warm-up and runs); ``None`` for a flood."""
    runs = {"bench": settings.repeat, "soak": 1, "clients": 2}.get(mode)
    return None if runs is None else settings.warmup_s + runs * settings.duration_s


def run(args: argparse.Namespace) -> int:
    """Run the bench; print a table (or JSON); exit 1 if any call was missed or it failed."""
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return Exit.USAGE
    # Log lines of this process (the simulator, the token set seeded into Redis) on stderr, and
    # only errors: stdout is the table's or the JSON's.
    setup_cli_logging("error")
    # On a terminal, a bar on stderr for the time the runs should take, the phase lines above
    # it; elsewhere the phase lines alone (none with --json).
    bar = Bar(f"bench ({mode_of(args)})", expected_s(settings, mode_of(args)), unit="seconds")
    done: SoakReport | FloodReport | ClientsFileReport
    try:
        with bar:
            progress = None if args.json else bar.note
            if args.clients_file is not None:
                clients = ClientsFileSettings(
                    bench=settings, rows=args.clients_file, control=args.control
                )
                done = runtime.run(bar.ticking(run_clients_file(clients, progress)))
            elif args.soak:
                soak = SoakSettings(bench=settings, sample_every_s=args.sample_every)
                done = runtime.run(bar.ticking(run_soak(soak, progress)))
            elif args.flood is not None:
                flood = FloodSettings(
                    bench=settings, forged=args.flood, concurrency=args.concurrency
                )
                done = runtime.run(bar.ticking(run_flood(flood, progress)))
            else:
                report = runtime.run(bar.ticking(run_bench(settings, progress=progress)))
    except (BenchError, RedisProbeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return Exit.FAILED
    if args.soak or args.flood is not None or args.clients_file is not None:
        print(json.dumps(done.to_json(), indent=2) if args.json else done.text())
        return Exit.OK
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        rows = [(f"#{i + 1}", r.to_json()) for i, r in enumerate(report.runs)]
        if len(report.runs) > 1:
            rows.append(("median", report.median))
        print(table(rows))
    return Exit.OK
