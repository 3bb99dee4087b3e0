"""``log.mask_numbers``: callers' numbers masked in log lines, workplaces and call ids kept."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from router import runtime
from router.commands import run as run_command
from router.logs import mask_number, setup_daemon_logging
from router.simulator import SimConfig
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    RunningDaemon,
    daemon_sim_config,
    finished,
)
from tests.polling import eventually

FULL = "79219462761"
""":data:`IVANOV_CLIENT` in the normal form."""


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("79219462761", "+7921***2761"),
        ("+7 (921) 946-27-61", "+7921***2761"),
        ("89219462761", "+7921***2761"),
        ("78124241500@pstn", "+7812***1500"),
        ("+49 30 123456789", "+49301***6789"),
        ("+1 555 123 4567", "+1555***4567"),
        ("2761555", "***55"),
        ("101", "***"),
        ("anonymous", "anonymous"),
    ],
)
def test_mask_number(raw: str, masked: str) -> None:
    """Country code and 3 digits, then the last 4; short numbers mostly masked; words kept."""
    assert mask_number(raw) == masked


def _decision_line(mask: bool) -> dict[str, Any]:
    out = io.StringIO()
    setup_daemon_logging("json", "info", stream=out, mask_numbers=mask)
    structlog.get_logger("t").info(
        "decision",
        call_id="c1",
        caller="+7 921 946-27-61",
        callee=NUMBER,
        workplace=IVANOV_WP,
        reasons=[
            f"caller {FULL} is client of ivanov",
            f"ivanov is busy (workplace {IVANOV_WP} is on a call)",
            "caller 78124241500 matches prefix 7812: petrova",
        ],
    )
    line: dict[str, Any] = json.loads(out.getvalue())
    return line


def test_processor_masks_caller_and_numbers_in_reasons() -> None:
    """caller and the numbers in reasons are masked; callee, workplace and call_id untouched."""
    line = _decision_line(mask=True)
    assert line["caller"] == "+7921***2761"
    assert (line["callee"], line["workplace"], line["call_id"]) == (NUMBER, IVANOV_WP, "c1")
    assert line["reasons"] == [
        "caller +7921***2761 is client of ivanov",
        f"ivanov is busy (workplace {IVANOV_WP} is on a call)",
        "caller +7812***1500 matches prefix 7812: petrova",
    ]


def test_without_mask_numbers_lines_are_unchanged() -> None:
    """``mask_numbers: false`` (the default): numbers as they came."""
    line = _decision_line(mask=False)
    assert line["caller"] == "+7 921 946-27-61"
    assert line["reasons"][0] == f"caller {FULL} is client of ivanov"


async def test_daemon_decision_line_has_no_full_caller_number(daemon: RunningDaemon) -> None:
    """A real decision logged with the mask on: no full caller number; call_id, workplace kept."""
    out = io.StringIO()
    setup_daemon_logging("json", "info", stream=out, mask_numbers=True)
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await finished(call) == "transferred"

    def decision() -> dict[str, Any] | None:
        lines = [json.loads(text) for text in out.getvalue().splitlines()]
        return next((line for line in lines if line["event"] == "decision"), None)

    line = await eventually(decision, "the decision line")
    text = json.dumps(line)
    assert FULL not in text
    assert FULL[1:] not in text  # nor the national part
    assert (line["caller"], line["call_id"], line["workplace"]) == (
        "+7921***2761",
        call.id,
        IVANOV_WP,
    )
    assert any("+7921***2761" in reason for reason in line["reasons"])


def test_run_passes_mask_numbers_to_the_daemon_logging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mtt-router run`` sets up the daemon's logging with ``log.mask_numbers``."""
    config = {
        "mtt": {"client_id": "id", "client_secret": "s", "redirect_uri": "http://127.0.0.1/mtt"},
        "log": {"mask_numbers": True},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    seen: dict[str, Any] = {}

    def fake_setup(fmt: str, level: str, *, mask_numbers: bool = False, extra: Any = None) -> None:
        seen.update(fmt=fmt, level=level, mask_numbers=mask_numbers)

    def fake_run(coro: Coroutine[Any, Any, int]) -> int:
        coro.close()  # never served
        return 0

    monkeypatch.setattr(run_command, "setup_daemon_logging", fake_setup)
    monkeypatch.setattr(runtime, "run", fake_run)
    args = argparse.Namespace(config=str(path), worker=None, workers=None, supervisor_pid=None)
    assert run_command._run(args) == 0
    assert seen == {"fmt": "json", "level": "info", "mask_numbers": True}


def test_non_ascii_digits_do_not_break_masking() -> None:
    """Superscript digits (str.isdigit() is True for them) are not digits to mask."""
    assert mask_number("²" * 12) == "²" * 12
