"""``mtt-router rules push|pull``: the rules in Redis, for ``rules.source: redis``.

``push`` validates a file with the rules loader and stores its exact text as the next version
(every replica picks it up within a second); ``pull`` writes the current version to a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from router.commands._common import add_config_arg, fail
from router.commands._groups import Subparsers
from router.commands._storage import report_rules_error, run_storage
from router.config import Config
from router.errors import RulesError
from router.exits import Exit
from router.rules.loader import load_rules
from router.state.redis import RedisStores


def add_store_commands(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``push FILE`` and ``pull FILE`` to the ``rules`` group's subparsers."""
    p = actions.add_parser(
        "push",
        help="validate a rules file and store it in Redis as the new version",
        description="Validate FILE (exit 1 with one line per problem) and store it in Redis as "
        "the new version; every replica with rules.source: redis loads it.",
    )
    p.add_argument("file", metavar="FILE", help="the rules file (YAML, format version 1)")
    p.add_argument(
        "--force", action="store_true", help="store a new version even if the text is unchanged"
    )
    add_config_arg(p)
    p.set_defaults(handler=_push)

    p = actions.add_parser(
        "pull",
        help="write the rules stored in Redis to a file",
        description="Write the current rules version from Redis to FILE ('-': standard output).",
    )
    p.add_argument("file", metavar="FILE", help="where to write the rules ('-': standard output)")
    add_config_arg(p)
    p.set_defaults(handler=_pull)


def _push(args: argparse.Namespace) -> int:
    path: str = args.file
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: Windows editors add a BOM
    except OSError as exc:
        return fail(f"{path}: cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return fail(f"{path}: not UTF-8 text: {exc.reason}")
    try:
        load_rules(text, path)
    except RulesError as exc:
        for line in exc.lines():
            print(line)
        return Exit.FAILED

    async def push(config: Config, stores: RedisStores) -> int:
        current = await stores.rules.pull()
        if current is not None and current[1] == text and not args.force:
            print(f"{path}: unchanged, still version {current[0]} (--force pushes anyway)")
            return Exit.OK
        version = await stores.rules.push(text, source=os.path.basename(path))
        print(f"{path}: pushed as version {version}")
        return Exit.OK

    return run_storage(args, push)


def _pull(args: argparse.Namespace) -> int:
    path: str = args.file

    async def pull(config: Config, stores: RedisStores) -> int:
        current = await stores.rules.pull()
        if current is None:
            return fail("no rules in Redis yet: push some with `mtt-router rules push FILE`")
        version, text = current
        try:
            load_rules(text, f"redis rules version {version}")
        except RulesError as exc:  # still written out: it is what the replicas see
            print(f"warning: version {version} does not load with this version:", file=sys.stderr)
            report_rules_error(exc)
        if path == "-":
            sys.stdout.write(text)
            return Exit.OK
        try:
            _write_atomically(Path(path), text)
        except OSError as exc:
            return fail(f"{path}: cannot write: {exc.strerror or exc}")
        print(f"{path}: wrote version {version}")
        return Exit.OK

    return run_storage(args, pull)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
