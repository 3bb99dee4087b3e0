"""Where the daemon's rules come from, and how a new version replaces the old one.

:class:`RulesHolder` keeps the rules in use; a reload parses off the event loop and swaps the
reference in one assignment, so a decision sees either the old rules or the new ones, never a mix.
An invalid edit keeps the last good rules, logs one line and counts
``mtt_router_rules_reloads_total{result="error"}``. A rules file's ``clients_file`` is watched as
well. A reload of big rules (a ``clients_file`` of any real size) runs in a child process
(:mod:`router.rules.load_worker`): whatever the rules' size, the event loop only swaps a
reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from router.errors import RulesError, StorageError
from router.metrics import Metrics
from router.rules.client_table import Signature
from router.rules.load_worker import Job, Loaded, load_here, load_off_loop
from router.rules.model import Rules
from router.state.protocols import SharedRules

log = structlog.get_logger("router.rules")

FILE_POLL_INTERVAL_S = 1.0
"""How often the rules file's metadata is checked for changes (a stat(), off the event loop)."""
LOGGED_PROBLEMS = 20
"""A rejected load logs this many problems (a broken CSV may have thousands), and the count."""


@dataclass(frozen=True)
class LoadedRules:
    """Rules in use, with where they came from and which version they are."""

    rules: Rules
    version: int
    source: str
    loaded_at: float


class RulesHolder:
    """The current rules. Readers take ``holder.current`` once per decision."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.current: LoadedRules | None = None
        self.last_error: str | None = None
        self.listeners: list[Callable[[], None]] = []
        """Called after every install (e.g. to check the rules against the PBX's workplaces)."""

    def install(
        self,
        rules: Rules,
        version: int,
        source: str,
        *,
        load_s: float | None = None,
        cpu_s: float | None = None,
    ) -> None:
        """Make ``rules`` the rules in use (``load_s``: how long reading them took, ``cpu_s``:
        the CPU time the reading took, in a child process or a thread)."""
        self.current = LoadedRules(rules, version, source, time.time())
        self.last_error = None
        self._metrics.rules_reloads.labels("ok").inc()
        self._metrics.rules_version.set(version)
        for kind, count in rules.counts().items():
            self._metrics.rules_entries.labels(kind).set(count)
        took = {} if load_s is None else {"load_s": round(load_s, 3)}
        if cpu_s is not None:
            took["load_cpu_s"] = round(cpu_s, 3)
        log.info("rules_loaded", source=source, version=version, **took, **rules.counts())
        for listener in self.listeners:
            listener()

    def reject(self, source: str, error: Exception) -> None:
        """Record a failed load; the rules in use stay as they are."""
        lines = error.lines() if isinstance(error, RulesError) else [f"{source}: {error}"]
        shown = lines[:LOGGED_PROBLEMS]
        more = {"more_problems": len(lines) - len(shown)} if len(lines) > len(shown) else {}
        self.last_error = "; ".join(shown) + (
            f"; ... {len(lines) - len(shown)} more" if more else ""
        )
        self._metrics.rules_reloads.labels("error").inc()
        log.error(
            "rules_rejected",
            source=source,
            problems=shown,
            **more,
            kept_version=self.current.version if self.current else None,
        )


def _file_signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class _Seen:
    """What the last load read: the rules file and its ``clients_file`` (path and signature)."""

    rules: Signature | None = None
    clients_path: Path | None = None
    clients: Signature | None = None


async def _load(job: Job, reason: str) -> Loaded:
    """The start loads in a thread here (nothing is served yet); a reload of big rules in a
    child process (:func:`~router.rules.load_worker.load_off_loop`)."""
    return await asyncio.to_thread(load_here if reason == "start" else load_off_loop, job)


class FileRulesSource:
    """Rules from a YAML file, reloaded when the file or its ``clients_file`` changes and on
    :meth:`reload` (SIGHUP).

    A changed ``clients_file`` is reloaded once it has held still for a poll interval, so a CRM
    export being written is not read half-way (writing it beside and renaming it is safest).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        holder: RulesHolder,
    ) -> None:
        self.path = Path(path)
        self.holder = holder
        self._seen = _Seen()
        self._settling: Signature | None = None
        self._version = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the file once and start watching it."""
        await self.reload("start")
        self._task = asyncio.create_task(self._watch(), name="rules-file-watch")

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel("rules source closing")
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self, reason: str) -> bool:
        """Parse the file (and its ``clients_file``) off the event loop and install it; False
        (rules kept) if it is invalid."""
        async with self._lock:
            started = time.monotonic()
            signature = await asyncio.to_thread(_file_signature, self.path)
            loaded = await _load(Job(str(self.path), path=str(self.path)), reason)
            self._seen = _Seen(signature, loaded.clients_path, loaded.clients_signature)
            self._settling = None
            if loaded.rules is None:
                error = loaded.error or RulesError(str(self.path), [(0, "no rules")])
                self.holder.reject(str(self.path), error)
                return False
            self._version += 1
            log.info("rules_reload", reason=reason, path=str(self.path))
            self.holder.install(
                loaded.rules,
                self._version,
                str(self.path),
                load_s=time.monotonic() - started,
                cpu_s=loaded.cpu_s,
            )
            return True

    async def _changed(self) -> str | None:
        """Why to reload now, if at all."""
        seen = self._seen
        rules = await asyncio.to_thread(_file_signature, self.path)
        if rules is not None and rules != seen.rules:
            return "file changed"
        if seen.clients_path is None:
            return None
        clients = await asyncio.to_thread(_file_signature, seen.clients_path)
        if clients == seen.clients:
            self._settling = None
            return None
        if clients is not None and clients != self._settling:
            self._settling = clients  # changed since the last poll: wait until it holds still
            return None
        return "clients_file changed"

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_INTERVAL_S)
            try:
                reason = await self._changed()
                if reason is not None:
                    await self.reload(reason)
            except Exception:  # the watcher must outlive any surprise; say so once per event
                log.exception("rules_watch_failed", path=str(self.path))


class SharedRulesSource:
    """Rules pushed to the shared storage by ``mtt-router rules push``; every replica follows the
    newest version.

    Pub/sub brings a new version within moments (the store also polls, for lost messages). Until
    a version exists the holder stays empty: the daemon is not ready and releases parked calls to
    the PBX. A pushed text that does not load (pushed by another release) keeps the last good rules.
    The ``clients_file`` content travels with its version (``rules push`` stores both).
    """

    def __init__(
        self,
        store: SharedRules,
        holder: RulesHolder,
    ) -> None:
        self.store = store
        self.holder = holder
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the current version if Redis answers, then follow new versions."""
        try:
            await self.reload("start")
        except StorageError as exc:
            log.warning("rules_redis_unavailable", error=str(exc))
        known = self.holder.current.version if self.holder.current else None
        self._task = asyncio.create_task(
            self.store.watch(self._on_version, known_version=known), name="rules-redis-watch"
        )

    async def close(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel("rules source closing")
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _on_version(self, version: int) -> None:
        log.info("rules_version_announced", version=version)
        await self.reload("new version")

    async def reload(self, reason: str) -> bool:
        """Pull the stored version and install it; False when absent or invalid."""
        async with self._lock:
            started = time.monotonic()
            pulled = await self.store.pull()
            if pulled is None:
                log.warning(
                    "rules_redis_empty", hint="push rules with `mtt-router rules push FILE`"
                )
                return False
            source = f"redis rules version {pulled.version}"
            job = Job(source, text=pulled.text, clients_text=pulled.clients)
            loaded = await _load(job, reason)
            if loaded.rules is None:
                self.holder.reject(source, loaded.error or RulesError(source, [(0, "no rules")]))
                return False
            log.info("rules_reload", reason=reason, source=source)
            self.holder.install(
                loaded.rules,
                pulled.version,
                "redis",
                load_s=time.monotonic() - started,
                cpu_s=loaded.cpu_s,
            )
            return True
