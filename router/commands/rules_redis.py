"""``mtt-router rules push|pull|history|rollback``: the rules in Redis, for ``rules.source: redis``.

``push`` validates a file with the rules loader and stores its exact text as the next version,
with its ``clients_file`` content (every replica picks it up within a second); ``pull`` writes
the current version to a file (and its ``clients_file`` beside it). The last ten versions are
kept: ``history`` lists them, ``rollback VERSION`` stores an old one's content as the next
version, so the replicas follow it the way they follow a push.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path, PurePath

from router.commands._common import add_config_arg, add_json_arg, fail, print_json, print_table
from router.commands._groups import Subparsers
from router.commands._storage import report_rules_error, run_storage
from router.config import Config
from router.errors import RulesError
from router.exits import Exit
from router.rules.client_table import ClientsRead, ClientsRequest, read_clients
from router.rules.loader import load_rules
from router.state.redis import RedisStores
from router.state.redis_rules import KEEP, Version

FOLLOW = "replicas with rules.source: redis load it within seconds"


def add_store_commands(actions: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``push FILE``, ``pull FILE``, ``history`` and ``rollback VERSION`` to ``rules``."""
    p = actions.add_parser(
        "push",
        help="validate a rules file and store it in Redis as the new version",
        description="Validate FILE (exit 1 with one line per problem) and store it in Redis as "
        "the new version, with the content of its clients_file; every replica with "
        f"rules.source: redis loads it. The last {KEEP} versions are kept (rules history).",
    )
    p.add_argument("file", metavar="FILE", help="the rules file (YAML)")
    p.add_argument(
        "--force", action="store_true", help="store a new version even if nothing changed"
    )
    add_config_arg(p)
    p.set_defaults(handler=_push)

    p = actions.add_parser(
        "pull",
        help="write the rules stored in Redis to a file",
        description="Write the current rules version from Redis to FILE ('-': standard output), "
        "and its clients_file where the rules name it, relative to FILE's folder.",
    )
    p.add_argument("file", metavar="FILE", help="where to write the rules ('-': standard output)")
    add_config_arg(p)
    p.set_defaults(handler=_pull)

    p = actions.add_parser(
        "history",
        help=f"list the rules versions kept in Redis (the last {KEEP})",
        description=f"List the last {KEEP} rules versions: version, when, from which host and "
        "file, and counts; the current one is marked.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(handler=_history)

    p = actions.add_parser(
        "rollback",
        help="make a kept rules version current again",
        description="Store the content of kept version VERSION (rules and clients_file) as a new "
        f"version; {FOLLOW}. Exit 1 when VERSION is not kept or does not load.",
    )
    p.add_argument("version", metavar="VERSION", type=int, help="a version `rules history` lists")
    add_config_arg(p)
    p.set_defaults(handler=_rollback)


class _Keep:
    """A clients reader for ``push``: reads the file once and keeps the text it checked."""

    def __init__(self) -> None:
        self.name = ""
        self.text: str | None = None

    def __call__(self, request: ClientsRequest) -> ClientsRead:
        try:
            text = request.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return read_clients(request)  # says why, as a load would
        self.name, self.text = str(request.path), text
        return read_clients(request._replace(text=text))


def _push(args: argparse.Namespace) -> int:
    path: str = args.file
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: Windows editors add a BOM
    except OSError as exc:
        return fail(f"{path}: cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return fail(f"{path}: not UTF-8 text: {exc.reason}")
    keep = _Keep()
    base = Path(path).parent
    try:
        rules = load_rules(text, path, base=base, clients_reader=keep)
    except RulesError as exc:
        for line in exc.lines():
            print(line)
        return Exit.FAILED
    name = os.path.relpath(keep.name, base) if keep.text is not None else ""
    note = f" with {name} ({len(rules.clients)} clients)" if keep.text is not None else ""

    async def push(config: Config, stores: RedisStores) -> int:
        current = await stores.rules.head()
        sha = "" if keep.text is None else hashlib.sha256(keep.text.encode()).hexdigest()
        if current is not None and current[1:] == (text, sha) and not args.force:
            print(f"{path}: unchanged, still version {current[0]} (--force pushes anyway)")
            return Exit.OK
        version = await stores.rules.push(
            text,
            source=os.path.basename(path),
            clients=keep.text,
            clients_file=name,
            counts=rules.counts(),
        )
        print(f"{path}: pushed as version {version}{note}")
        return Exit.OK

    return run_storage(args, push)


def _pull(args: argparse.Namespace) -> int:
    path: str = args.file

    async def pull(config: Config, stores: RedisStores) -> int:
        current = await stores.rules.pull()
        if current is None:
            return fail("no rules in Redis yet: push some with `mtt-router rules push FILE`")
        version, text, clients, name = current
        try:
            load_rules(text, f"redis rules version {version}", clients_text=clients)
        except RulesError as exc:  # still written out: it is what the replicas see
            print(f"warning: version {version} does not load with this version:", file=sys.stderr)
            report_rules_error(exc)
        if path == "-":
            sys.stdout.write(text)
            if clients is not None:
                print(
                    f"note: its clients_file {name} is not written (pull to a file)",
                    file=sys.stderr,
                )
            return Exit.OK
        target = Path(path)
        try:
            _write_atomically(target, text)
            print(f"{path}: wrote version {version}")
            if clients is not None:
                target = _beside(Path(path), name)
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(target, clients)
                print(f"{target}: wrote its clients_file")
        except OSError as exc:
            return fail(f"{target}: cannot write: {exc.strerror or exc}")
        return Exit.OK

    return run_storage(args, pull)


def _beside(rules_path: Path, name: str) -> Path:
    """Where ``pull`` writes a clients_file: as the rules name it, relative to the rules file;
    an absolute name or one that climbs out (``..``) goes beside it under its base name."""
    pure = PurePath(name)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return rules_path.parent / (pure.name or "clients.csv")
    return rules_path.parent / pure


def _history(args: argparse.Namespace) -> int:
    async def history(config: Config, stores: RedisStores) -> int:
        kept = await stores.rules.history()
        current = await stores.rules.version()
        if not kept:
            return fail("no rules versions kept in Redis yet: push some with `rules push FILE`")
        if args.json:
            print_json([v.to_json() | {"current": v.version == current} for v in kept])
            return Exit.OK
        print_table(
            ("version", "pushed", "host", "file", "managers", "clients", "prefixes", "note"),
            [_row(v, current) for v in kept],
        )
        return Exit.OK

    return run_storage(args, history)


def _row(v: Version, current: int | None) -> tuple[object, ...]:
    when = (
        None
        if v.pushed_at is None
        else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.pushed_at))
    )
    notes = ["current"] if v.version == current else []
    if v.rollback_of is not None:
        notes.append(f"rollback to {v.rollback_of}")
    if v.clients_file:
        notes.append(f"clients_file {v.clients_file} ({v.clients_bytes or 0} bytes)")
    counts = v.counts
    return (v.version, when, v.host or None, v.source or None, counts.get("managers"),
            counts.get("clients"), counts.get("prefixes"), "; ".join(notes) or None)  # fmt: skip


def _rollback(args: argparse.Namespace) -> int:
    wanted: int = args.version

    async def rollback(config: Config, stores: RedisStores) -> int:
        kept = [v.version for v in await stores.rules.history()]
        old = await stores.rules.pull_version(wanted) if wanted in kept else None
        if old is None:
            shown = ", ".join(map(str, kept)) or "none"
            return fail(f"rules version {wanted} is not kept (kept: {shown})")
        if wanted == await stores.rules.version():
            print(f"rules version {wanted} is already the current one: nothing stored")
            return Exit.OK
        try:
            load_rules(old.text, f"redis rules version {wanted}", clients_text=old.clients)
        except RulesError as exc:
            print(f"rules version {wanted} does not load with this release:", file=sys.stderr)
            return report_rules_error(exc)
        version = await stores.rules.rollback(wanted)
        if version is None:
            return fail(f"rules version {wanted} is no longer kept (pushed over meanwhile)")
        print(f"rolled back: version {version} is the content of version {wanted}; {FOLLOW}")
        return Exit.OK

    return run_storage(args, rollback)


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
