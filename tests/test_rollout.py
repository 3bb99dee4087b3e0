"""Live or shadow, per external number (router.rollout)."""

from __future__ import annotations

from router.config import parse_config
from router.rollout import Rollout
from router.services import restart_only_changes


def test_live_by_default_for_every_number() -> None:
    """mode: live with no live_numbers: every call is live."""
    rollout = Rollout()
    assert (rollout.is_live("74996497803"), rollout.is_live(None)) == (True, True)


def test_shadow_wins_over_live_numbers() -> None:
    """mode: shadow sends every call to shadow: going back is one edit and a SIGHUP."""
    assert not Rollout("shadow", ["74996497803"]).is_live("74996497803")


def test_live_numbers_in_any_spelling() -> None:
    """live_numbers are compared in the normal form; other numbers, and no number, are shadow."""
    rollout = Rollout("live", ["8 (499) 649-78-03"])
    assert rollout.is_live("74996497803")
    assert not rollout.is_live("78005560251")
    assert not rollout.is_live(None)


def test_set_reports_a_change_and_status_lists_each_number() -> None:
    """set() says whether anything changed; status() names each known number's state."""
    rollout = Rollout()
    assert not rollout.set("live", [])
    assert rollout.set("live", ["74996497803"])
    assert not rollout.set("live", ["+7 499 649-78-03"])  # the same number, spelled otherwise
    assert rollout.status(["74996497803", "78005560251"]) == {
        "mode": "live",
        "live_numbers": ["+7 499 649-78-03"],
        "numbers": {"74996497803": "live", "78005560251": "shadow"},
    }
    assert rollout.status(None)["numbers"] == {}


def test_sighup_applies_only_the_reloadable_keys() -> None:
    """Between two configs, mode and live_numbers reload; other changes are named for a restart."""

    base = {"mtt": {"client_id": "c", "client_secret": "s", "redirect_uri": "https://h/mtt"}}
    running = parse_config(base, env={})
    edited = parse_config(
        {
            **base,
            "routing": {"mode": "shadow", "live_numbers": ["74996497803"]},
            "server": {"listen": "127.0.0.1:8081"},
            "storage_prefix": "other:",
        },
        env={},
    )
    assert restart_only_changes(running, edited) == ["server.listen", "storage_prefix"]
    assert restart_only_changes(running, running) == []


def test_unreadable_live_numbers_make_nothing_live() -> None:
    """Configured live numbers that all fail to read: no line is live (never every line)."""
    rollout = Rollout("live", ["abc"])
    assert not rollout.is_live("74996497803")
