"""``doctor``'s storage check for a ``redis+sentinel://`` storage: the sentinels, the primary
they name, and whether it has a replica to fail over to.

Asked with the daemon's own timeouts (a sentinel that takes longer is as good as down to it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError, ResponseError

from router.config import Config
from router.config_redis import parse_sentinel_url
from router.doctor_context import Check, fail, ok, warn
from router.state.redis_conn import connect
from router.state.redis_sentinel import BlockingSentinelPool

NAME = "storage"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _ask(sentinel: Any, service: str) -> dict[str, Any] | str | None:
    """The sentinel's view of ``service``; ``None`` when it does not monitor it; else the error."""
    try:
        state = await sentinel.sentinel_master(service)
    except ResponseError as exc:
        return None if "no such master" in str(exc).lower() else _describe(exc)
    except (RedisError, OSError, TimeoutError) as exc:
        return _describe(exc)
    return dict(state)


async def check_sentinel(config: Config) -> Check:
    """Which sentinels answer, the primary they name, its PING and its replicas."""
    parsed = parse_sentinel_url(config.storage)
    client = connect(config.storage, role="daemon", options=config.redis)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        sentinels = pool.sentinel_manager.sentinels
        views = await asyncio.gather(*(_ask(s, parsed.service) for s in sentinels))
        names = [f"{host}:{port}" for host, port in parsed.sentinels]
        down = [f"{n} ({v})" for n, v in zip(names, views, strict=True) if isinstance(v, str)]
        states = [v for v in views if isinstance(v, dict)]
        fix_sentinels = (
            "start the sentinels, or correct their addresses in `storage` "
            "(and redis.sentinel_password, TLS)"
        )
        if len(down) == len(names):
            return fail(NAME, f"no sentinel answers: {'; '.join(down)}", fix_sentinels)
        if not states:
            return fail(
                NAME,
                f"the sentinels answer but none monitors {parsed.service!r}",
                "correct the service name in `storage` (the name in `sentinel monitor`)",
            )
        try:
            host, port = await pool.sentinel_manager.discover_master(parsed.service)
            info = await client.info("replication")
        except (RedisError, OSError, TimeoutError) as exc:
            return fail(
                NAME,
                f"no usable primary of {parsed.service!r}: {_describe(exc)}",
                "check the primary, the password in `storage` and TLS (redis.tls_*)",
            )
        replicas = int(info.get("connected_slaves", 0))
        seen = max(int(s.get("num-other-sentinels", 0)) for s in states) + 1
        detail = (
            f"{len(names) - len(down)} of {len(names)} sentinels answer "
            f"({seen} monitor {parsed.service!r}); primary {host}:{port} answers, "
            f"{replicas} replica{'' if replicas == 1 else 's'}"
        )
        if down:
            return warn(NAME, f"{detail}; not answering: {'; '.join(down)}", fix_sentinels)
        if not replicas:
            return warn(
                NAME,
                f"{detail}: nothing to fail over to, and token writes are not replicated",
                "add a replica of the primary (`replicaof`) that the sentinels can promote",
            )
        if seen < 3:
            return warn(
                NAME,
                f"{detail}: a failover needs a majority of the sentinels",
                "run three sentinels (or more), on separate hosts",
            )
        return ok(NAME, detail)
    finally:
        await client.aclose()
