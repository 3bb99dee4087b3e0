"""Every Redis-backed store of one process, opened together and closed together.

``open_redis_stores(config, metrics)`` is what the store factory calls for ``storage: redis://``.
The stores live in ``redis_*.py`` modules; each module's docstring lists its keys. All keys and
channels start with ``config.storage_prefix`` (default ``mtt-router:``):

===============================  =====================================================  ======
key / channel                    what                                                   TTL
===============================  =====================================================  ======
``tokens``                       hash {version, json}: the OAuth token set (CAS)        none
``tokens:lock``                  refresh lock owner                                     30 s
``oauth:state:<state>``          pending OAuth state (GETDEL)                           caller
``claim:<call id>``              the replica that decides a call (SET NX)               caller
``reroute:<call id>``            hash {answered, hop, owner}: no-answer re-routes       2 h
``presence``                     zset "<workplace>|<call id>" -> expiry ms              longest
``presence:ended``               calls freed lately: a late "busy" for them is refused   1 h
``presence:batches``             channel: one message per batch of busy/free changes    -
``rules``                        hash {version, text, pushed_at, source}                none
``rules:changed``                channel: new version                                   -
``clients``                      hash number -> manager id                              none
``clients:import:<random>``      map being built by ``clients import --replace``        1 h
``clients:changed``              channel: number or ``*``                               -
``learned:<number>``             "<manager> <learned at ms>": rules ``learn``           ttl_days
``directory:<kind>``             hash {version, updated_at, json}                       none
``directory:changed``            channel: ``<kind>:<version>``                          -
===============================  =====================================================  ======
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from redis.exceptions import RedisError

from router.config import Config
from router.metrics import Metrics
from router.sources import CLIENTS_SPACE, LEARNED_SPACE
from router.state.memory import LocalClaims
from router.state.redis_claims import RedisCallStore
from router.state.redis_clients import ClientMap, ImportResult
from router.state.redis_conn import HealthProbe, RedisHealth, RedisOps, Role, connect
from router.state.redis_directory import DirectorySnapshot, DirectoryStore
from router.state.redis_learned import RedisLearned
from router.state.redis_presence import RedisPresence
from router.state.redis_reroutes import RedisReroutes
from router.state.redis_rules import RulesStore
from router.state.redis_tokens import RedisOAuthStateStore, RedisTokenStore

__all__ = [
    "ClientMap",
    "DirectorySnapshot",
    "DirectoryStore",
    "ImportResult",
    "LocalClaims",
    "RedisCallStore",
    "RedisHealth",
    "RedisLearned",
    "RedisOAuthStateStore",
    "RedisOps",
    "RedisPresence",
    "RedisReroutes",
    "RedisStores",
    "RedisTokenStore",
    "RulesStore",
    "connect",
    "open_redis_stores",
]


@dataclass
class RedisStores:
    """The Redis stores of one process, sharing one connection pool."""

    ops: RedisOps
    health: RedisHealth
    tokens: RedisTokenStore
    states: RedisOAuthStateStore
    calls: RedisCallStore
    presence: RedisPresence
    rules: RulesStore
    clients: ClientMap
    directory: DirectoryStore
    reroutes: RedisReroutes
    learned: RedisLearned
    probe: HealthProbe | None = None

    async def ping(self) -> bool:
        """True when Redis answers a PING now."""
        return await self.ops.ping()

    async def aclose(self) -> None:
        """Stop the background tasks, then close the connection pool."""
        if self.probe is not None:
            await self.probe.aclose()
        await self.learned.aclose()
        await self.clients.aclose()
        await self.presence.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.ops.client.aclose()


async def open_redis_stores(
    config: Config,
    metrics: Metrics,
    *,
    role: Role = "daemon",
    background: bool | None = None,
) -> RedisStores:
    """Connect to ``config.storage`` and build every store on one pool.

    Never fails because Redis is down: the first PING only sets :attr:`RedisStores.health`.
    With ``background`` (default: for the daemon role) it starts the health probe and the
    presence and client-map subscribers; close with :meth:`RedisStores.aclose`.
    """
    client = connect(config.storage, role=role, options=config.redis)
    health = RedisHealth(metrics)
    ops = RedisOps(client, prefix=config.storage_prefix, metrics=metrics, health=health, role=role)
    clients = ClientMap(ops)
    learned = RedisLearned(ops)
    stores = RedisStores(
        ops=ops,
        health=health,
        tokens=RedisTokenStore(ops),
        states=RedisOAuthStateStore(ops),
        # A space per storage read a candidate source declares (router/sources.py).
        calls=RedisCallStore(ops, spaces={CLIENTS_SPACE: clients}, keys={LEARNED_SPACE: learned}),
        presence=RedisPresence(ops),
        rules=RulesStore(ops),
        clients=clients,
        directory=DirectoryStore(ops),
        reroutes=RedisReroutes(ops),
        learned=learned,
    )
    await ops.ping()
    if background if background is not None else role == "daemon":
        stores.probe = HealthProbe(ops)
        stores.probe.start()
        stores.presence.start()
        stores.clients.start()
    return stores
