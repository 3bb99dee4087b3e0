"""Configuration loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.config import HostPort, load_config, parse_config
from router.errors import ConfigError
from router.services import warn_plain_http

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = {
    "mtt": {
        "client_id": "ccb350cc-6218-40b0-b134-3d290f00b9e7",
        "client_secret": "secret",
        "redirect_uri": "https://router.example.ru/mtt",
    }
}


def test_example_config_is_valid_and_documents_every_key() -> None:
    """config.example.yaml loads, and every key the loader knows appears in it."""
    config = load_config(ROOT / "config.example.yaml", env={"MTT_CLIENT_SECRET": "s3cret"})
    assert config.mtt.client_secret == "s3cret"
    assert config.server.listen == HostPort("0.0.0.0", 8080)
    text = (ROOT / "config.example.yaml").read_text()
    for key in (
        "client_id", "client_secret", "redirect_uri", "oauth_url", "api_url", "listen",
        "admin_listen", "admin_token", "storage:", "storage_prefix", "tokens_file", "source",
        "path", "decision_budget_ms", "park", "mode", "live_numbers", "format", "level",
        "capture", "capture_max_mb", "capture_keep", "mask_numbers", "max_inflight", "centrex_id",
        "allow_from", "trusted_proxies", "read_timeout_s",
    ):  # fmt: skip
        assert key in text


def test_defaults_match_the_spec() -> None:
    """Only mtt is required; the rest takes the defaults config.example.yaml documents."""
    config = parse_config(MINIMAL, env={})
    assert config.mtt.oauth_url == "https://oauth.mtt.ru"
    assert config.mtt.api_url == "https://openapi.mtt.ru"
    assert config.server.admin_listen == HostPort("127.0.0.1", 9100)
    assert config.storage == "memory"
    assert config.tokens_file == "tokens.json"
    assert config.rules.source == "file"
    assert config.rules.path == "rules/example.yaml"
    assert config.routing.decision_budget_ms == 3500
    assert config.routing.park == ()
    assert (config.log.format, config.log.level) == ("json", "info")
    assert (config.routing.mode, config.routing.live_numbers) == ("live", ())
    assert (config.log.capture, config.log.capture_max_mb, config.log.capture_keep) == ("", 100, 5)
    assert config.log.mask_numbers is False


def test_rollout_and_capture_keys_are_validated() -> None:
    """routing.mode, routing.live_numbers and the capture keys: bad values named, good ones kept."""
    good = {
        **MINIMAL,
        "routing": {"mode": "shadow", "live_numbers": ["74951112233", 74996497803]},
        "log": {
            "capture": "cap.jsonl",
            "capture_max_mb": 5,
            "capture_keep": 2,
            "mask_numbers": True,
        },
    }
    config = parse_config(good, env={})
    assert (config.routing.mode, config.routing.live_numbers) == (
        "shadow",
        ("74951112233", "74996497803"),
    )
    assert (config.log.capture, config.log.capture_max_mb, config.log.capture_keep) == (
        "cap.jsonl",
        5,
        2,
    )
    assert config.log.mask_numbers is True
    bad = {
        **MINIMAL,
        "routing": {"mode": "dark", "live_numbers": "74951112233"},
        "log": {"capture_max_mb": 0, "capture_keep": "two", "mask_numbers": "yes"},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, env={})
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "log.capture_keep",
        "log.capture_max_mb",
        "log.mask_numbers",
        "routing.live_numbers",
        "routing.mode",
    ]


@pytest.mark.parametrize(
    ("redirect_uri", "callback", "events"),
    [
        ("https://host", "/", "/events"),
        ("https://host/", "/", "/events"),
        ("https://host/mtt", "/mtt", "/mtt/events"),
        ("https://host/a/b/", "/a/b", "/a/b/events"),
    ],
)
def test_paths_derive_from_redirect_uri(redirect_uri: str, callback: str, events: str) -> None:
    """The callback and events paths come from the path P of redirect_uri."""
    data = {"mtt": {**MINIMAL["mtt"], "redirect_uri": redirect_uri}}
    mtt = parse_config(data, env={}).mtt
    assert (mtt.callback_path, mtt.events_path) == (callback, events)


def test_env_expansion() -> None:
    """${VAR} is read from the environment; a missing variable names the key."""
    data = {"mtt": {**MINIMAL["mtt"], "client_secret": "${SECRET}"}}
    assert parse_config(data, env={"SECRET": "x1"}).mtt.client_secret == "x1"
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert info.value.problems == ["mtt.client_secret: environment variable SECRET is not set"]


def test_every_problem_is_reported_with_its_key() -> None:
    """Unknown keys, wrong types and bad URLs are all listed, one line each, naming the key."""
    data = {
        "mtt": {"client_id": 5, "redirect_uri": "router.example.ru", "api_url": "ftp://x"},
        "server": {"listen": "8080", "colour": "blue"},
        "routing": {"decision_budget_ms": 9000, "park": 7},
        "log": {"format": "xml"},
        "storage": "postgres://db",
        "extra": 1,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    problems = info.value.problems
    expected_prefixes = [
        "extra: unknown key",
        "mtt.client_id: must be a string",
        "mtt.client_secret: required",
        "mtt.redirect_uri: must be an absolute http(s) URL",
        "mtt.api_url: must be an absolute http(s) URL",
        "server.colour: unknown key",
        "server.listen: must be 'host:port'",
        "routing.decision_budget_ms: must be an integer",
        "routing.park: must be 'all' or a list",
        "log.format: must be 'json' or 'console'",
        "storage: must be 'memory' or a redis:// URL",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected_prefixes)


def test_redis_rules_need_redis_storage() -> None:
    """rules.source: redis with memory storage is refused."""
    with pytest.raises(ConfigError, match=r"rules.source: 'redis' needs storage"):
        parse_config({**MINIMAL, "rules": {"source": "redis"}}, env={})


def test_secret_not_in_repr() -> None:
    """A config's repr never shows the client secret or the admin token."""
    data = {**MINIMAL, "server": {"admin_token": "adm1n-t0ken-very-long"}}
    config = parse_config(data, env={})
    assert "secret" not in repr(config.mtt).replace("client_secret", "")
    assert "adm1n-t0ken-very-long" not in repr(config)


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    """Broken YAML is a ConfigError naming the file and line."""
    path = tmp_path / "c.yaml"
    path.write_text("mtt:\n  client_id: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}:")


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_park_all_and_list() -> None:
    """routing.park accepts 'all' or a list of numbers."""
    assert parse_config({**MINIMAL, "routing": {"park": "all"}}, env={}).routing.park == "all"
    park = parse_config({**MINIMAL, "routing": {"park": [78005560251]}}, env={}).routing.park
    assert park == ("78005560251",)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "[::]", "admin.internal"])
def test_admin_listener_off_loopback_needs_a_token(host: str) -> None:
    """A non-loopback admin listener without server.admin_token is refused, naming the key."""
    data = {**MINIMAL, "server": {"admin_listen": f"{host}:9100"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={})
    assert [p.split(":")[0] for p in caught.value.problems] == ["server.admin_token"]
    with_token = {**MINIMAL, "server": {"admin_listen": f"{host}:9100", "admin_token": "t" * 16}}
    assert parse_config(with_token, env={}).server.admin_token == "t" * 16
    for loopback in ("127.0.0.1", "[::1]", "localhost"):
        local = {**MINIMAL, "server": {"admin_listen": f"{loopback}:9100"}}
        assert parse_config(local, env={}).server.admin_token is None


def test_plain_http_to_mtt_off_this_machine_is_warned() -> None:
    """http:// MTT URLs get one warning each unless they point at this machine (a simulator)."""
    remote = {**MINIMAL, "mtt": {**MINIMAL["mtt"], "api_url": "http://openapi.mtt.ru"}}
    local = {**MINIMAL, "mtt": {**MINIMAL["mtt"], "oauth_url": "http://127.0.0.1:8900"}}
    with capture_logs() as remote_logs:
        warn_plain_http(parse_config(remote, env={}))
    with capture_logs() as local_logs:
        warn_plain_http(parse_config(local, env={}))
    assert [(e["event"], e["key"]) for e in remote_logs] == [("mtt_url_not_https", "mtt.api_url")]
    assert local_logs == []


def test_max_inflight_is_a_bounded_integer() -> None:
    """server.max_inflight defaults to 1000; zero, a float or a string is refused by name."""
    assert parse_config(MINIMAL, env={}).server.max_inflight == 1000
    assert parse_config({**MINIMAL, "server": {"max_inflight": 5}}, env={}).server.max_inflight == 5
    for bad in (0, 2.5, "many", True):
        with pytest.raises(ConfigError) as caught:
            parse_config({**MINIMAL, "server": {"max_inflight": bad}}, env={})
        assert caught.value.problems[0].startswith("server.max_inflight: must be an integer")


def test_allow_from_and_trusted_proxies_are_checked_cidrs() -> None:
    """Addresses and CIDRs are kept; a bad entry or a non-list is named."""
    server = {"allow_from": ["203.0.113.0/24", "2001:db8::1"], "trusted_proxies": ["10.0.0.1"]}
    config = parse_config({**MINIMAL, "server": server}, env={})
    assert config.server.allow_from == ("203.0.113.0/24", "2001:db8::1")
    assert config.server.trusted_proxies == ("10.0.0.1",)
    bad = {"allow_from": ["203.0.113.0/33"], "trusted_proxies": "10.0.0.1"}
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, "server": bad}, env={})
    assert caught.value.problems == [
        "server.allow_from: not an address or CIDR: '203.0.113.0/33'",
        "server.trusted_proxies: must be a list of addresses or CIDRs",
    ]


def test_a_live_number_that_is_not_a_number_is_refused() -> None:
    """routing.live_numbers: a typo is named, not silently dropped (which would make all live)."""
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, "routing": {"live_numbers": ["74996497803", "abc"]}}, env={})
    assert caught.value.problems == ["routing.live_numbers: not a phone number: 'abc'"]


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Bytes that are not UTF-8: one ConfigError line, not a traceback."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"mtt:\n  client_id: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
