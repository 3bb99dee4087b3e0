"""``mtt-router run``: the daemon (or, with ``server.workers`` > 1, its supervisor)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from aiohttp import web

from router import runtime
from router.commands._common import add_config_arg, load_config_or_exit
from router.config import MAX_WORKERS, Config, workers_problems
from router.daemon import serve
from router.errors import ListenError
from router.exits import Exit
from router.logs import setup_daemon_logging
from router.supervisor import Supervisor
from router.supervisor_admin import create_supervisor_app
from router.worker import Worker, die_with


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_WORKERS}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` command."""
    parser = sub.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon. SIGTERM/SIGINT: graceful stop. SIGHUP: reload rules. "
        "With server.workers (or --workers) above 1: that many daemon processes sharing the "
        "public port, supervised by this one (needs a Redis storage).",
    )
    add_config_arg(parser)
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="daemon processes sharing server.listen (overrides server.workers; 1: this "
        "process is the daemon)",
    )
    # Set by the supervisor for the processes it starts (router/worker.py).
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args.config)
    if isinstance(config, int):
        return config
    if args.worker is not None:
        return _run_worker(args, config)
    if args.workers is not None:
        server = dataclasses.replace(config.server, workers=args.workers)
        problems = workers_problems(server, config.storage, key="--workers")
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return Exit.USAGE
        config = dataclasses.replace(config, server=server)
    # The supervisor's lines carry its pid; its workers' lines their index and pid.
    extra = {"supervisor": os.getpid()} if config.server.workers > 1 else None
    log = config.log
    setup_daemon_logging(log.format, log.level, mask_numbers=log.mask_numbers, extra=extra)
    try:
        if config.server.workers > 1:
            return asyncio.run(_supervise(config, args.config))
        return runtime.run(serve(config, config_path=args.config))
    except ListenError as exc:
        print(exc, file=sys.stderr)  # port taken, address not local: one line, no traceback
        return Exit.FAILED


def _run_worker(args: argparse.Namespace, config: Config) -> int:
    worker = Worker(args.worker)
    if args.supervisor_pid is not None and not die_with(args.supervisor_pid):
        print(f"worker {worker.index}: its supervisor is gone", file=sys.stderr)
        return Exit.FAILED
    log = config.log
    setup_daemon_logging(
        log.format, log.level, mask_numbers=log.mask_numbers, extra=worker.log_fields
    )
    try:
        return runtime.run(serve(config, config_path=args.config, worker=worker))
    except ListenError as exc:
        print(f"worker {worker.index}: {exc}", file=sys.stderr)
        return Exit.FAILED


async def _supervise(config: Config, config_path: str) -> int:
    supervisor = Supervisor(config, config_path, config.server.workers)
    runner = web.AppRunner(create_supervisor_app(supervisor), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        return await supervisor.run(runner)
    finally:
        await runner.cleanup()
