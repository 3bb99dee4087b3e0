"""Progress on a terminal for ``clients import``, ``replay`` and ``bench``; plain output elsewhere.

Each command runs as an operator runs it, in a subprocess: once with its output to pipes (what
a script, cron or CI sees: not one control character, no bar, the same output as before), once
on a pseudo-terminal (:mod:`pty`, 120 columns), where the bar must be drawn on stderr, and then
erased, above the command's own output.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.capture import Captured, capture_line
from router.progress import Bar, on_terminal
from tests.fixtures.daemon import IVANOV_CLIENT, NUMBER, RULES

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60.0
BAR = "━"
"""What rich draws a bar with."""
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""Control characters other than tab and newline: escape sequences, carriage returns."""
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")},
    "TERM": "xterm-256color",
    "PYTHONIOENCODING": "utf-8",
}


@dataclass
class Ran:
    """What one command did: exit code, and its output (stdout and stderr as one on a pty)."""

    code: int
    out: str
    err: str = ""


def piped(args: Sequence[str | Path], **env: str) -> Ran:
    """``python -m router ARGS`` with stdout and stderr to pipes (``FORCE_COLOR`` set: the
    decision to draw is the command's, by ``isatty``, not the environment's)."""
    done = subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=ROOT,
        env={**ENV, "FORCE_COLOR": "1", **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def on_pty(args: Sequence[str | Path]) -> Ran:
    """``python -m router ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = io.BytesIO()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the slave side has closed it
                break
            if not chunk:
                break
            out.write(chunk)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return Ran(code, out.getvalue().decode("utf-8", "replace"))


def assert_plain(ran: Ran) -> None:
    for name, text in (("stdout", ran.out), ("stderr", ran.err)):
        assert BAR not in text, f"{name}: a bar off a terminal:\n{text}"
        found = CONTROL.search(text)
        assert found is None, f"{name}: control character {found.group()!r} off a terminal"


def assert_drawn(ran: Ran, description: str) -> None:
    assert "\x1b[" in ran.out, ran.out
    bars = [line for line in re.split(r"[\r\n]", ran.out) if BAR in line]
    assert bars, f"no bar drawn:\n{ran.out}"
    assert any(description in line for line in bars), bars


# -- the Bar itself ---------------------------------------------------------------------------


def test_a_bar_off_a_terminal_draws_nothing_and_notes_plain_lines() -> None:
    stream = io.StringIO()
    assert not on_terminal(stream)
    with Bar("work", 10.0, stream=stream) as bar:
        assert not bar.drawn
        bar.update(5.0)
        bar.note("phase one")
    assert stream.getvalue() == "phase one\n"


def test_dumb_terminals_get_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            monkeypatch.setenv("TERM", "xterm")
            assert on_terminal(stream)
            monkeypatch.setenv("TERM", "dumb")
            assert not on_terminal(stream)
    finally:
        os.close(slave)
        os.close(master)


# -- the commands -----------------------------------------------------------------------------


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """A capture of 3,000 parked calls (about 2 MB)."""
    path = tmp_path / "capture.jsonl"
    with path.open("wb") as out:
        for i in range(3000):
            body = (
                '{"event":"callNotifications","result":{"callInfo":{'
                f'"call":{{"id":"call-{i}","tag":"t"}},'
                f'"caller":{{"id":"{IVANOV_CLIENT}","forwarderList":[]}},'
                f'"callee":{{"id":"{NUMBER}","forwarderList":[]}},'
                '"state":"trying","type":"incoming","transportId":"10.0.0.1:5073"}}}'
            )
            item = Captured(1_790_000_000.0 + i, "10.0.0.1", 200, body.encode(), len(body))
            out.write(capture_line(item))
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


def test_replay_draws_a_bar_on_a_terminal_only(capture: Path, rules: Path) -> None:
    args = ("replay", capture, "--rules", rules)
    plain = piped(args)
    assert plain.code == 0, plain.err
    assert_plain(plain)
    assert "3000 parked calls" in plain.out
    assert plain.err == ""

    drawn = on_pty(args)
    assert drawn.code == 0, drawn.out
    assert_drawn(drawn, "replay capture.jsonl")
    assert "3000 parked calls" in drawn.out


def test_clients_import_draws_a_bar_on_a_terminal_only(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "mtt:\n"
        '  client_id: "ccb350cc-6218-40b0-b134-3d290f00b9e7"\n'
        '  client_secret: "secret"\n'
        '  redirect_uri: "https://router.example.ru/mtt"\n'
        f'storage: "{redis_url}"\n'
        "rules:\n  source: redis\n"
        "log:\n  format: console\n",
        encoding="utf-8",
    )
    csv = tmp_path / "clients.csv"
    csv.write_text(
        "number,manager\n" + "".join(f"+7921{i:07d},ivanov\n" for i in range(50_000)),
        encoding="utf-8",
    )
    args = ("clients", "import", csv, "--config", config)
    plain = piped(args)
    assert plain.code == 0, plain.err
    assert_plain(plain)
    assert "imported 50000 rows" in plain.err

    drawn = on_pty(args)
    assert drawn.code == 0, drawn.out
    assert_drawn(drawn, "import clients.csv")
    assert "imported 50000 rows" in drawn.out


def test_bench_draws_a_bar_on_a_terminal_only(tmp_path: Path) -> None:
    args = (
        *("bench", "--rate", "20", "--duration", "1", "--warmup", "0"),
        *("--workplaces", "5", "--callers", "10", "--workdir", tmp_path),
    )
    plain = piped(args)
    assert plain.code == 0, plain.err
    assert_plain(plain)
    assert "run 1/1: routed " in plain.err  # the phase lines, as they were
    assert "routed" in plain.out

    drawn = on_pty(args)
    assert drawn.code == 0, drawn.out
    assert_drawn(drawn, "bench (bench)")
    assert "run 1/1: routed " in drawn.out  # above the bar
