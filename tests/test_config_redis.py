"""The storage URL (plain, TLS, Sentinel) and the ``redis:`` section: what is accepted, and one
problem line naming the key for everything that is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import Config, parse_config
from router.config_redis import SentinelUrl, parse_sentinel_url
from router.doctor_sentinel import check_sentinel
from router.errors import ConfigError
from router.state.redis_conn import connect, redact_url
from router.state.redis_sentinel import BlockingSentinelPool, primary_of
from tests.fixtures.net import free_port

ROOT = Path(__file__).resolve().parent.parent
MTT = {"client_id": "id", "client_secret": "secret", "redirect_uri": "https://r.example.ru/mtt"}


def config(storage: str, redis: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {"mtt": MTT, "storage": storage}
    if redis is not None:
        data["redis"] = redis
    return parse_config(data, env={})


def problems(storage: str, redis: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(storage, redis)
    return info.value.problems


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/mymaster/2",
            SentinelUrl((("s1", 26380), ("s2", 26379), ("::1", 26381)), "mymaster", 2),
        ),
        (
            "rediss+sentinel://:p%40ss@s1/mymaster",
            SentinelUrl((("s1", 26379),), "mymaster", 0, None, "p@ss", tls=True),
        ),
        (
            "redis+sentinel://app:pw@s1:1/svc/",
            SentinelUrl((("s1", 1),), "svc", 0, "app", "pw"),
        ),
    ],
)
def test_sentinel_urls_are_taken_apart(url: str, expected: SentinelUrl) -> None:
    """Hosts with the default port 26379, the service, the db, the data nodes' login, TLS."""
    parsed = parse_sentinel_url(url)
    assert parsed == expected
    assert config(url).storage == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "no service name"),
        ("redis+sentinel:///mymaster", "no sentinel address"),
        ("redis+sentinel://s1:notaport/mymaster", "bad port"),
        ("redis+sentinel://s1/mymaster/zero", "numeric db"),
        ("redis+sentinel://s1/mymaster/0?ssl_ca_certs=/x", "no ?query"),
        ("redis+sentinel://:secret@s1:99999/m", "bad port"),
        ("postgres://db", "must be 'memory' or a redis:// URL"),
    ],
)
def test_bad_storage_urls_are_refused_without_their_password(url: str, message: str) -> None:
    """One ``storage:`` line saying what is wrong; a password in the URL is never echoed."""
    found = problems(url)
    assert len(found) == 1, found
    assert found[0].startswith("storage: "), found
    assert message in found[0]
    assert "secret" not in found[0]


def test_redis_section_keys_are_checked_against_the_url(tmp_path: Path) -> None:
    """TLS keys need a TLS URL, sentinel keys a Sentinel URL, files must be readable, a key file
    needs its certificate, a sentinel user its password; a bad bool is named."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    found = problems(
        "redis://127.0.0.1:6379/0",
        {"tls_ca_file": str(ca), "sentinel_password": "x", "tls_verify_hostname": False},
    )
    assert sorted(found) == [
        "redis.sentinel_password: only read with a redis+sentinel:// storage URL",
        "redis.tls_ca_file: only read with a TLS storage URL (rediss:// or rediss+sentinel://)",
        "redis.tls_verify_hostname: only read with a TLS storage URL (rediss:// or "
        "rediss+sentinel://)",
    ]
    # At their defaults the keys are harmless anywhere (the example config shows them all).
    assert config("memory", {"tls_ca_file": "", "tls_verify_hostname": True}).storage == "memory"
    found = problems(
        "rediss+sentinel://s1/m",
        {
            "tls_key_file": str(ca),
            "tls_ca_file": str(tmp_path / "nope.pem"),
            "sentinel_username": "u",
            "tls_verify_hostname": "no",
            "colour": "blue",
        },
    )
    assert sorted(found) == [
        "redis.colour: unknown key",
        "redis.sentinel_password: required with redis.sentinel_username",
        f"redis.tls_ca_file: cannot read {tmp_path / 'nope.pem'}: No such file or directory",
        "redis.tls_key_file: needs redis.tls_cert_file",
        "redis.tls_verify_hostname: must be true or false, got 'no'",
    ]


def test_a_sentinel_config_with_tls_and_both_logins() -> None:
    """The documented shape loads: the URL carries the data nodes' password, the section the
    sentinels' login and the CA; the password stays out of reprs and redacted URLs."""
    cfg = config(
        "rediss+sentinel://:data-secret@s1:26379,s2:26379,s3:26379/mymaster/0",
        {
            "tls_ca_file": str(ROOT / "pyproject.toml"),  # any readable file will do here
            "sentinel_username": "watcher",
            "sentinel_password": "sentinel-secret",
            "tls_verify_hostname": False,
        },
    )
    assert cfg.redis.sentinel_password == "sentinel-secret"
    assert not cfg.redis.tls_verify_hostname
    assert "secret" not in repr(cfg)
    assert redact_url(cfg.storage) == "rediss+sentinel://***@s1:26379,s2:26379,s3:26379/mymaster/0"


async def test_a_sentinel_client_is_redis_py_s_own_and_does_no_io_until_used() -> None:
    """``connect`` builds redis-py's Sentinel client on a blocking sentinel pool: the data nodes'
    password and TLS on the pool, the sentinels' own login on the sentinel clients."""
    cfg = config(
        "rediss+sentinel://:data-secret@127.0.0.1:1,127.0.0.1:2/svc/3",
        {"sentinel_password": "sentinel-secret", "tls_verify_hostname": False},
    )
    client = connect(cfg.storage, role="daemon", options=cfg.redis)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelPool)
        assert pool.service_name == "svc"
        kwargs = pool.connection_kwargs
        assert (kwargs["password"], kwargs["db"], kwargs["ssl_check_hostname"]) == (
            "data-secret",
            3,
            False,
        )
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
        assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"
        assert primary_of(client) is None  # nobody asked yet
    finally:
        await client.aclose()


async def test_doctor_fails_when_no_sentinel_answers() -> None:
    """The storage check names each sentinel that does not answer, and what to do."""
    port = free_port()
    check = await check_sentinel(config(f"redis+sentinel://127.0.0.1:{port}/mymaster/0"))
    assert check.status == "fail"
    assert check.detail.startswith(f"no sentinel answers: 127.0.0.1:{port} (")
    assert "start the sentinels" in check.fix


def test_the_example_config_documents_the_redis_section() -> None:
    """config.example.yaml names every key of the redis: section and the Sentinel URL."""
    text = (ROOT / "config.example.yaml").read_text(encoding="utf-8")
    for key in (
        "redis+sentinel://",
        "rediss://",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_verify_hostname",
        "sentinel_username",
        "sentinel_password",
    ):
        assert key in text, key
