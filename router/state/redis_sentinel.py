"""Redis behind Sentinel, through redis-py's own Sentinel client, and TLS settings for any URL.

``storage: "redis+sentinel://[:password@]s1:26379,s2:26379/mymaster/0"``: a
:class:`redis.asyncio.sentinel.Sentinel` asks the sentinels for the primary of ``mymaster``
whenever a connection opens. When the primary dies, its connections break; commands fail fast
(the storage is "down": local claims, presence from this replica's view, tokens from memory) until
the sentinels have promoted a replica, and the next connection goes to the new primary: no restart.
A demoted primary that still answers refuses writes (READONLY), which redis-py turns into a
reconnect too. Pub/sub subscribers reconnect the same way (:mod:`router.state.redis_pubsub`).

The pool is redis-py's :class:`~redis.asyncio.sentinel.SentinelConnectionPool` combined with its
:class:`~redis.asyncio.BlockingConnectionPool`, so a burst of commands queues for a connection as
it does with a plain URL, and closing the pool closes the sentinel clients too.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from router.config_redis import RedisOptions, SentinelUrl, is_tls_url


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A sentinel-managed pool that waits for a free connection instead of refusing one."""

    sentinel_manager: Sentinel

    async def aclose(self) -> None:
        """Close the connections, then the sentinel clients this pool asks."""
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def tls_kwargs(url: str, options: RedisOptions | None) -> dict[str, Any]:
    """redis-py's ``ssl_*`` arguments for ``url`` (none unless it is a TLS URL)."""
    if not is_tls_url(url):
        return {}
    opts = options if options is not None else RedisOptions()
    return {
        "ssl_ca_certs": opts.tls_ca_file or None,
        "ssl_certfile": opts.tls_cert_file or None,
        "ssl_keyfile": opts.tls_key_file or None,
        "ssl_check_hostname": opts.tls_verify_hostname,
    }


def sentinel_kwargs(
    parsed: SentinelUrl, options: RedisOptions, common: dict[str, Any], tls: dict[str, Any]
) -> dict[str, Any]:
    """Connection arguments for the sentinels themselves: the timeouts of the data nodes, their
    own login (``redis.sentinel_*``) and the same TLS."""
    kwargs: dict[str, Any] = {
        key: common[key]
        for key in ("socket_connect_timeout", "socket_timeout", "retry", "client_name")
        if key in common
    }
    kwargs["decode_responses"] = True
    if options.sentinel_password:
        kwargs["password"] = options.sentinel_password
        kwargs["username"] = options.sentinel_username or None
    if parsed.tls:
        kwargs |= {"ssl": True, **tls}
    return kwargs


def sentinel_client(
    parsed: SentinelUrl, options: RedisOptions, common: dict[str, Any], tls: dict[str, Any]
) -> aioredis.Redis:
    """A client of ``parsed.service``'s primary, whichever it is now.

    ``common`` holds the pool and connection arguments a plain URL gets (timeouts, retry, pool
    size, decoding); ``tls`` the ``ssl_*`` ones. No I/O happens here.
    """
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py: untyped
        list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs(parsed, options, common, tls)
    )
    pool_kwargs: dict[str, Any] = {
        **common,
        **tls,
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        "ssl": parsed.tls,
    }
    client: aioredis.Redis = sentinel.master_for(
        parsed.service, connection_pool_class=BlockingSentinelPool, **pool_kwargs
    )
    return client


def primary_of(client: aioredis.Redis) -> str | None:
    """``host:port`` of the primary the sentinels named last (``None``: not a sentinel client,
    or not asked yet)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool) or not pool.master_address:
        return None
    host, port = pool.master_address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
