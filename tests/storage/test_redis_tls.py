"""Passwords and TLS against real redis-server processes with a throwaway CA (openssl).

One TLS redis-server with a password that requires client certificates (``rediss://``), and a
primary, a replica and a sentinel all on TLS with passwords (``rediss+sentinel://``): the
daemon's stores connect with the config's ``redis:`` section, and anything less than the right CA,
client certificate and passwords is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.config import Config, parse_config
from router.doctor_sentinel import check_sentinel
from router.metrics import Metrics
from router.mtt.tokens import TokenSet
from router.state.redis import open_redis_stores
from tests.fixtures.redis_ha import HaSet, Node, Tls, make_tls, sockets_closed

PASSWORD = "data-node-secret"
SENTINEL_PASSWORD = "sentinel-secret"
MTT = {"client_id": "id", "client_secret": "secret", "redirect_uri": "https://r.example.ru/mtt"}


def config(storage: str, redis: dict[str, Any]) -> Config:
    return parse_config({"mtt": MTT, "storage": storage, "redis": redis}, env={})


def tokens(version: int) -> TokenSet:
    now = time.time()
    return TokenSet(
        f"access-{version}", f"refresh-{version}", now + 3600, now + 86400, now, version=version
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A second CA: certificates the servers do not trust, and a CA that does not sign theirs."""
    return make_tls(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Node]:
    node = Node("tls", tmp_path_factory.mktemp("tls-redis"), [], PASSWORD, tls)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def tls_section(tls: Tls, *, client: Tls | None = None, ca: Tls | None = None) -> dict[str, Any]:
    client = client or tls
    return {
        "tls_ca_file": str((ca or tls).ca),
        "tls_cert_file": str(client.client_cert),
        "tls_key_file": str(client.client_key),
    }


async def test_rediss_with_password_ca_and_client_certificate(tls_server: Node, tls: Tls) -> None:
    """rediss:// with the CA and client certificate of the redis: section: the stores work, and
    the host name is verified (the certificate names 127.0.0.1)."""
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    stores = await open_redis_stores(config(url, tls_section(tls)), Metrics(), role="cli")
    try:
        assert stores.health.up, stores.health.last_error
        assert await stores.tokens.save(tokens(1), expected_version=None)
        loaded = await stores.tokens.load()
        assert loaded is not None
        assert loaded.access_token == "access-1"
    finally:
        await stores.aclose()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no client certificate", ""),
        ("untrusted client certificate", ""),  # the alert, or a reset before it arrives
        ("another CA", "CERTIFICATE_VERIFY_FAILED"),
        ("wrong password", "invalid"),
        ("plain redis:// to a TLS port", "Connection"),
    ],
)
async def test_rediss_refused_without_the_right_credentials(
    tls_server: Node, tls: Tls, other_ca: Tls, case: str, expected: str
) -> None:
    """Each missing or wrong piece leaves the storage down, with the reason in its health."""
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    section = tls_section(tls)
    if case == "no client certificate":
        section = {"tls_ca_file": str(tls.ca)}
    elif case == "untrusted client certificate":
        section = tls_section(tls, client=other_ca)
    elif case == "another CA":
        section = tls_section(tls, ca=other_ca)
    elif case == "wrong password":
        url = f"rediss://:wrong@127.0.0.1:{tls_server.port}/0"
    else:
        url, section = f"redis://:{PASSWORD}@127.0.0.1:{tls_server.port}/0", {}
    stores = await open_redis_stores(config(url, section), Metrics(), role="cli")
    try:
        assert not stores.health.up
        assert expected.lower() in str(stores.health.last_error).lower(), stores.health.last_error
    finally:
        await stores.aclose()
        await sockets_closed(tls_server.port)


@pytest.fixture(scope="module")
def tls_sentinel_set(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[HaSet]:
    """A primary, a replica (TLS replication) and one sentinel, all TLS with passwords."""
    ha = HaSet(
        tmp_path_factory.mktemp("tls-sentinel"),
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        tls=tls,
        sentinel_count=1,
    )
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()


async def test_rediss_sentinel_with_passwords(tls_sentinel_set: HaSet) -> None:
    """rediss+sentinel:// with both passwords: the primary the sentinel names is used, a token
    write is acknowledged by the replica over TLS replication (no warning), and doctor's storage
    check reads the same over TLS."""
    ha = tls_sentinel_set
    cfg = config(ha.url, ha.redis_section())
    stores = await open_redis_stores(cfg, Metrics(), role="daemon", background=False)
    try:
        assert stores.health.up, stores.health.last_error
        assert stores.ops.primary == f"127.0.0.1:{ha.primary.port}"
        with capture_logs() as logs:
            assert await stores.tokens.save(tokens(2), expected_version=None)
        assert [e for e in logs if e["event"] == "tokens_not_replicated"] == []
    finally:
        await stores.aclose()
    replica = ha.replica.client()
    try:  # WAIT returned, so the replica has it now
        assert await replica.hget("mtt-router:tokens", "version") == "2"
    finally:
        await replica.aclose()
    check = await check_sentinel(cfg)
    assert check.status == "warn", check  # one sentinel: no majority to fail over with
    assert f"primary 127.0.0.1:{ha.primary.port} answers, 1 replica" in check.detail


@pytest.mark.parametrize("missing", ["sentinel password", "client certificate"])
async def test_rediss_sentinel_refused_without_credentials(
    tls_sentinel_set: HaSet, missing: str
) -> None:
    """Without the sentinels' password, or without a client certificate, no primary is found."""
    section = tls_sentinel_set.redis_section()
    if missing == "sentinel password":
        del section["sentinel_password"]
    else:
        del section["tls_cert_file"], section["tls_key_file"]
    cfg = config(tls_sentinel_set.url, section)
    stores = await open_redis_stores(cfg, Metrics(), role="daemon", background=False)
    try:
        assert not stores.health.up
        assert "No master found" in str(stores.health.last_error), stores.health.last_error
    finally:
        await stores.aclose()
    check = await check_sentinel(cfg)
    assert (check.status, check.detail.startswith("no sentinel answers")) == ("fail", True), check
    await sockets_closed(*(node.port for node in tls_sentinel_set.sentinels))


def test_tls_files_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    """A TLS file that cannot be read is a config problem naming the key (exit 2 at start-up)."""
    with pytest.raises(Exception, match=r"redis.tls_ca_file: cannot read .*missing.pem"):
        config("rediss://127.0.0.1:6380/0", {"tls_ca_file": str(tmp_path / "missing.pem")})
