"""``mtt-router simulate``: the MTT simulator alone (OAuth + API + notifications + ``/_sim``).

Once listening it prints one JSON line on stdout (``{"event": "listening", "url": ...}``) so a
script started with ``--listen 127.0.0.1:0`` can learn the port; it runs until SIGTERM/SIGINT.

It logs like the daemon, not like an interactive command: JSON lines on stderr unless
``--log-format console``, on a terminal too. It is a long-running server that stands in for MTT
next to the daemon, and its log is most often read by the scripts, tests and process managers that
run it, beside the daemon's own JSON log; one format for both, whoever started it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any, Literal

import structlog

from router.commands._groups import Subparsers
from router.exits import Exit
from router.logs import setup_daemon_logging
from router.simulator import SimConfig, generated_workplaces, serve_simulator
from router.simulator.config import DOC_CLIENT_ID, DOC_CLIENT_SECRET, DOC_NUMBERS


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` command."""
    p = sub.add_parser(
        "simulate",
        help="run the MTT simulator (OAuth, API, call notifications) for tests and trials",
        description="Play MTT on one port: use its URL as both mtt.oauth_url and mtt.api_url. "
        "Place calls with POST /_sim/calls; see `router.simulator` for the control API.",
    )
    p.add_argument("--listen", default="127.0.0.1:8900", metavar="HOST:PORT", help="(port 0: any)")
    p.add_argument("--webhook", metavar="URL", help="where to POST notifications (.../events)")
    p.add_argument("--numbers", metavar="N,N", help="external numbers, comma-separated")
    p.add_argument(
        "--parked", default="all", metavar="all|none|N,N", help="numbers on parking at start"
    )
    p.add_argument(
        "--workplaces", metavar="SIP,SIP|COUNT", help="workplace SIP IDs, or how many to make"
    )
    p.add_argument("--access-ttl-s", type=float, default=7200.0)
    p.add_argument("--refresh-ttl-s", type=float, default=3 * 24 * 3600.0)
    p.add_argument("--parking-window-s", type=float, default=5.0)
    p.add_argument("--client-id", default=DOC_CLIENT_ID)
    p.add_argument("--client-secret", default=DOC_CLIENT_SECRET)
    p.add_argument("--redirect-uri", help="the registered redirect URI (default: accept any)")
    p.add_argument("--answer-after-ms", type=float, default=300.0, help="-1: never answer")
    p.add_argument("--talk-ms", type=float, default=1000.0)
    p.add_argument("--ring-timeout-ms", type=float, default=3000.0)
    p.add_argument("--terminals-key", choices=("terminals_list", "terminalsList"))
    p.add_argument("--seed", type=int, help="seed ids and fault rates for reproducible runs")
    p.add_argument(
        "--log-format",
        choices=("json", "console"),
        default="json",
        help="log lines on stderr: json (default, as the daemon writes) or console",
    )
    p.set_defaults(handler=run)


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def build_config(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` the flags describe; ``ValueError`` says what is wrong."""
    numbers = _csv(args.numbers) or DOC_NUMBERS
    parked: tuple[str, ...] | Literal["all"]
    if args.parked == "all":
        parked = "all"
    elif args.parked == "none":
        parked = ()
    else:
        parked = _csv(args.parked)
    settings: dict[str, Any] = {}
    if (workplaces := args.workplaces) is not None:
        many = workplaces.isdigit()
        settings["workplaces"] = generated_workplaces(int(workplaces)) if many else _csv(workplaces)
    if args.terminals_key:
        settings["terminals_key"] = args.terminals_key
    return SimConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uri=args.redirect_uri,
        access_ttl_s=args.access_ttl_s,
        refresh_ttl_s=args.refresh_ttl_s,
        numbers=numbers,
        parked=parked,
        parking_window_s=args.parking_window_s,
        answer_after_ms=None if args.answer_after_ms < 0 else args.answer_after_ms,
        talk_ms=args.talk_ms,
        ring_timeout_ms=args.ring_timeout_ms,
        webhook_url=args.webhook,
        seed=args.seed,
        **settings,
    )


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit 0 after a clean shutdown.

    Logging is the daemon's (``--log-format``, JSON by default, terminal or not): see the module
    docstring for why a simulator logs like a server rather than like an interactive command.
    """
    try:
        config = build_config(args)
        host, port = _listen(args.listen)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return Exit.USAGE
    setup_daemon_logging(args.log_format, "info")
    try:
        asyncio.run(_until_signalled(config, host, port))
    except OSError as exc:
        print(f"simulate: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    return Exit.OK


async def _until_signalled(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve(config, host, port, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def serve(
    config: SimConfig,
    host: str,
    port: int,
    stop: asyncio.Event,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator until ``stop`` is set; ``announce`` gets the JSON "listening" line."""
    log = structlog.get_logger("router.simulator")
    async with serve_simulator(config, host=host, port=port) as sim:
        line = {
            "event": "listening",
            "url": sim.url,
            "oauth_url": sim.url,
            "api_url": sim.url,
            "client_id": config.client_id,
            "webhook": config.webhook_url,
        }
        if announce is None:
            print(json.dumps(line), flush=True)
        else:
            announce(json.dumps(line))
        log.info("simulator listening", url=sim.url, webhook=config.webhook_url)
        await stop.wait()
        log.info("simulator stopping", calls=len(sim.calls()))
