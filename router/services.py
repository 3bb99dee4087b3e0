"""Everything the daemon runs on, built and torn down in one cleanup context.

:func:`services_ctx` is the single place where resources are opened (HTTP session, stores, token
manager, rules source, directory, engine) and closed again in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web

from router.answers import AnswerTracker
from router.bounds import Bound, Bounded
from router.capture import CaptureWriter
from router.clock import LoopClock, WallClock, utc_now
from router.config import Config, load_config
from router.config_read import is_loopback
from router.directory import Directory
from router.edge import SourceGuard
from router.engine import Engine
from router.errors import ConfigError, StorageError
from router.history import DecisionHistory
from router.learning import LearningTracker
from router.lookup import LOOKUP, LookupSource, make_lookup_session
from router.metrics import Metrics
from router.mtt.auth import TokenManager
from router.mtt.client import MttClient, make_session
from router.mtt.oauth import OAuthClient
from router.numbers import normalize
from router.rollout import Rollout
from router.rules.source import FileRulesSource, RulesHolder, SharedRulesSource
from router.sources import DEFAULT_SOURCES, CandidateSource
from router.state.factory import Stores, open_stores
from router.worker import Worker

log = structlog.get_logger("router")


@dataclass
class Services:
    """The daemon's long-lived parts, shared by the public and the admin app."""

    config: Config
    metrics: Metrics
    session: aiohttp.ClientSession
    stores: Stores
    tokens: TokenManager
    mtt: MttClient
    rules: RulesHolder
    rules_source: FileRulesSource | SharedRulesSource
    directory: Directory
    engine: Engine
    rollout: Rollout
    guard: SourceGuard
    started_at: float
    config_path: str | None = None
    capture: CaptureWriter | None = None
    """``log.capture``: every POST to ``P/events`` as received (``None``: off)."""
    learning: LearningTracker | None = None
    """The decided calls followed until they end (rules ``learn``)."""
    lookup: LookupSource | None = None
    """The CRM lookup (rules ``lookup``), on its own pooled session."""
    history: DecisionHistory | None = None
    """The recent decisions, for the status page and ``/status`` "history"."""

    def bounds(self) -> dict[str, Bound]:
        """How full every bounded in-process map is, by name (``/status`` "bounds")."""
        found = self.engine.bounds()
        found["sources"] = self.guard.bound()
        stores = self.stores
        parts: tuple[tuple[str, object], ...] = (
            ("claims", stores.calls),
            ("presence", stores.presence),
            ("oauth_states", stores.states),
            ("reroute_marks", stores.reroutes),
            ("learned", stores.learned),
        )
        for name, part in parts:
            if isinstance(part, Bounded):
                found[name] = part.bound()
        if self.capture is not None:
            found["capture_queue"] = self.capture.bound()
        cached = normalize.cache_info()
        found["number_cache"] = Bound(cached.currsize, cached.maxsize or 0)
        if self.learning is not None:
            found["learning"] = self.learning.bound()
        if self.lookup is not None:
            found["lookup_cache"] = self.lookup.bound()
        if self.history is not None:
            found["history"] = self.history.bound()
        return dict(sorted(found.items()))

    async def reload_rules(self, reason: str) -> bool:
        """Reload the rules (SIGHUP); False when the new rules were rejected."""
        try:
            return await self.rules_source.reload(reason)
        except StorageError as exc:
            log.error("rules_reload_failed", reason=reason, error=str(exc))
            return False

    async def reload(self, reason: str) -> bool:
        """SIGHUP: the rules, and the config keys that reload without a restart."""
        try:
            await self.reload_settings(reason)
        except Exception:  # whatever the settings did, the rules still reload
            log.exception("config_reload_failed", reason=reason)
        return await self.reload_rules(reason)

    async def reload_settings(self, reason: str) -> None:
        """Re-read ``routing.mode``, ``routing.live_numbers`` and ``server.allow_from`` from the
        config file; other changes are logged as needing a restart. An invalid file keeps the
        running settings."""
        if self.config_path is None:
            return
        try:
            fresh = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("config_reload_rejected", reason=reason, problems=exc.problems)
            return
        if self.guard.set(fresh.server.allow_from, self.config.server.trusted_proxies):
            log.info("allow_from_changed", allow_from=list(fresh.server.allow_from))
        routing = fresh.routing
        if self.rollout.set(routing.mode, routing.live_numbers):
            log.info("rollout_changed", mode=routing.mode, live_numbers=list(routing.live_numbers))
        pending = restart_only_changes(self.config, fresh)
        if pending:
            log.warning("config_changes_need_restart", keys=pending)


RELOADABLE = frozenset({"routing.mode", "routing.live_numbers", "server.allow_from"})
"""Config keys SIGHUP applies; every other change needs a restart."""


def restart_only_changes(running: Config, fresh: Config) -> list[str]:
    """The keys (``section.key``) that differ between two configs and need a restart to apply."""
    changed: list[str] = []
    for top in dataclasses.fields(running):
        old, new = getattr(running, top.name), getattr(fresh, top.name)
        if dataclasses.is_dataclass(old) and not isinstance(old, type):
            for sub in dataclasses.fields(old):
                key = f"{top.name}.{sub.name}"
                if getattr(old, sub.name) != getattr(new, sub.name) and key not in RELOADABLE:
                    changed.append(key)
        elif old != new:
            changed.append(top.name)
    return changed


def warn_plain_http(config: Config) -> None:
    """One warning line per MTT URL that is plain http to a host that is not this machine: the
    client secret and tokens would cross the network readable (fine for a local simulator)."""
    for key, url in (("mtt.oauth_url", config.mtt.oauth_url), ("mtt.api_url", config.mtt.api_url)):
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            log.warning("mtt_url_not_https", key=key, url=url, hint="use https:// in production")


SHARED_TOKENS_POLL_S = 1.0
LOCAL_TOKENS_POLL_S = 15.0
"""How often a daemon waiting for a login re-reads the token store (Redis / the tokens file)."""


def report_unlisted_workplaces(holder: RulesHolder, directory: Directory, metrics: Metrics) -> None:
    """Log the managers whose workplace MTT does not list (they are skipped when deciding)."""
    loaded, listed = holder.current, directory.workplace_ids
    if loaded is None or listed is None:
        return
    missing = {
        m.id: m.workplace for m in loaded.rules.managers.values() if m.workplace not in listed
    }
    metrics.rules_entries.labels("unlisted_workplaces").set(len(missing))
    if missing:
        log.warning(
            "rules_workplaces_not_listed",
            managers=missing,
            hint="these managers are skipped; check `mtt-router pbx workplaces`",
        )


SERVICES = web.AppKey("services", Services)
CLOCK: web.AppKey[WallClock] = web.AppKey("clock")
CONFIG = web.AppKey("config", Config)
CONFIG_PATH = web.AppKey("config_path", str)
"""Where the config was read from: SIGHUP re-reads its reloadable keys (absent: none)."""
METRICS = web.AppKey("metrics", Metrics)
WORKER = web.AppKey("worker", Worker)
"""Set in a worker of ``server.workers``: its own ``log.capture`` file (:mod:`router.worker`)."""


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open every resource, yield while serving, close them in reverse order."""
    config, metrics = app[CONFIG], app[METRICS]
    warn_plain_http(config)
    async with contextlib.AsyncExitStack() as stack:
        capture: CaptureWriter | None = None
        if config.log.capture:
            worker = app.get(WORKER)
            # Opened first, closed last: every POST answered before shutdown is flushed to it.
            capture = CaptureWriter(
                worker.capture_path(config.log.capture) if worker else config.log.capture,
                max_bytes=config.log.capture_max_mb * 1024 * 1024,
                keep=config.log.capture_keep,
                dropped=metrics.capture_dropped,
            )
            capture.start()
            stack.push_async_callback(capture.aclose)
        session = make_session()
        stack.push_async_callback(session.close)
        # The CRM's own pool (rules `lookup`): closed after the engine drained.
        lookup_session = make_lookup_session()
        stack.push_async_callback(lookup_session.close)
        lookup = LookupSource(lookup_session, metrics=metrics)
        stores = await open_stores(config, metrics, background=True)
        stack.push_async_callback(stores.aclose)
        tokens = TokenManager(
            OAuthClient(session, config.mtt, metrics),
            stores.tokens,
            stores.states,
            metrics,
            # The OAuth callback may land on another replica: while waiting for a login, re-read
            # the shared store every second (one HMGET) rather than leave calls unrouted for 15 s.
            poll_s=SHARED_TOKENS_POLL_S if stores.shared else LOCAL_TOKENS_POLL_S,
        )
        await tokens.start()
        stack.push_async_callback(tokens.close)
        mtt = MttClient(session, config.mtt.api_url, tokens, metrics)
        holder = RulesHolder(metrics)
        source: FileRulesSource | SharedRulesSource
        if config.rules.source == "redis" and stores.shared_rules is not None:
            # The config refuses rules.source: redis without a shared storage.
            source = SharedRulesSource(stores.shared_rules, holder)
        else:
            source = FileRulesSource(config.rules.path, holder)
        await source.start()
        stack.push_async_callback(source.close)
        directory = Directory(
            mtt,
            metrics,
            park=config.routing.park,
            shared=stores.shared_directory,
        )
        check = functools.partial(report_unlisted_workplaces, holder, directory, metrics)
        holder.listeners.append(check)
        directory.listeners.append(check)
        directory.start()
        stack.push_async_callback(directory.close)
        guard = SourceGuard(config.server.allow_from, config.server.trusted_proxies)
        if guard.open:
            log.warning(
                "events_open_to_anyone",
                hint="set server.allow_from to MTT's addresses (/status lists the sources seen)",
            )
        rollout = Rollout(config.routing.mode, config.routing.live_numbers)
        if rollout.mode == "shadow" or rollout.live_numbers:
            log.info("rollout", mode=rollout.mode, live_numbers=list(rollout.live_numbers))
        sources: dict[str, CandidateSource] = dict(DEFAULT_SOURCES)
        sources[LOOKUP] = lookup
        learning = LearningTracker(stores.learned, holder)
        history = DecisionHistory()
        engine = Engine(
            metrics=metrics,
            commander=mtt,
            rules=holder,
            directory=directory,
            calls=stores.calls,
            presence=stores.presence,
            budget_ms=config.routing.decision_budget_ms,
            clock=LoopClock(app.get(CLOCK, utc_now)),
            # Sources that need a resource (a CRM lookup's session) are added to these here.
            sources=sources,
            rollout=rollout,
            answers=AnswerTracker(metrics, on_answer=history.answered),
            on_decision=history.record,
            learning=learning,
            max_inflight=config.server.max_inflight,
            reroutes=stores.reroutes,
        )
        # Closed first: in-flight decisions finish (bounded by the budget) while the session,
        # tokens and stores they use are still open.
        stack.push_async_callback(engine.drain, config.routing.decision_budget_ms / 1000 + 0.5)
        app[SERVICES] = Services(
            config=config,
            metrics=metrics,
            session=session,
            stores=stores,
            tokens=tokens,
            mtt=mtt,
            rules=holder,
            rules_source=source,
            directory=directory,
            engine=engine,
            rollout=rollout,
            guard=guard,
            started_at=time.time(),
            config_path=app.get(CONFIG_PATH),
            capture=capture,
            lookup=lookup,
            learning=learning,
            history=history,
        )
        yield
