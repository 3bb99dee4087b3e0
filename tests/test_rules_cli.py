"""``mtt-router rules check`` and ``rules explain``, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "rules/example.yaml"

BROKEN = """\
version: 1
timezone: Europe/Moscow
managers:
  ivanov:
    workplace: "883140777716581"
    schedule: ofice
clients:
  "+7 921 946-27-61": ivanov
  "89219462761": petrova
fallback:
  otherwise: maybe
"""


def mtt_router(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router ARGS`` from the repository root."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


@pytest.fixture
def broken(tmp_path: Path) -> str:
    """A rules file with four problems."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    return str(path)


def test_check_valid_file() -> None:
    """A valid file: exit 0 and one OK line with the counts."""
    result = mtt_router("rules", "check", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rules/example.yaml: OK (managers: 4, clients: 10, prefixes: 1, fallback: 1; "
        "otherwise: pbx; timezone: Europe/Moscow)"
    ]


def test_check_invalid_file_prints_one_line_per_problem(broken: str) -> None:
    """An invalid file: exit 1 and `PATH:LINE: message` lines on stdout, in line order."""
    result = mtt_router("rules", "check", broken)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f'{broken}:6: manager ivanov: unknown schedule "ofice" (none are defined)',
        f'{broken}:9: clients: "89219462761": unknown manager "petrova" (known: ivanov)',
        f'{broken}:9: clients: duplicate client number "89219462761" = 79219462761 after '
        'normalisation (first on line 8 as "+7 921 946-27-61")',
        f'{broken}:11: fallback.otherwise must be pbx or wait, got "maybe"',
    ]
    assert f"{broken}: 4 problems" in result.stderr


def test_check_json(broken: str) -> None:
    """--json gives the same verdict as data."""
    ok = mtt_router("rules", "check", EXAMPLE, "--json")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["counts"] == {
        "managers": 4,
        "clients": 10,
        "prefixes": 1,
        "fallback": 1,
    }
    bad = mtt_router("rules", "check", "--json", broken)
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data["ok"] is False
    assert [p["line"] for p in data["problems"]] == [6, 9, 9, 11]


def test_check_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is a failure (exit 1), not a crash."""
    missing = tmp_path / "nope.yaml"
    result = mtt_router("rules", "check", str(missing))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{missing}:0: cannot read the rules file")


def test_explain_client_in_office_hours() -> None:
    """explain prints the decision and the reason chain."""
    result = mtt_router(
        "rules", "explain", "--rules", EXAMPLE, "+7 921 946-27-61", "--at", "2027-01-11T10:00+03:00"
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[:5] == [
        "caller:    +7 921 946-27-61 -> 79219462761",
        "at:        2027-01-11 10:00 Mon (Europe/Moscow)",
        "decision:  transfer to ivanov (Иван Иванов) at 883140777716581 [client]",
        "then:                  petrova (Мария Петрова) at 883140582526566 [deputy]",
        "then:                  sidorov (Пётр Сидоров (дежурный)) at 883140777380595 [fallback]",
    ]
    assert out[out.index("why:") :] == [
        "why:",
        "  - caller 79219462761 is client of ivanov",
        "  - ivanov is available",
        "  - deputy petrova is available",
        "  - fallback sidorov is available",
        "  - transfer to ivanov 883140777716581",
    ]


def test_explain_off_schedule_and_busy_as_json() -> None:
    """After hours with the duty manager busy, the call goes back to the PBX (otherwise: pbx)."""
    result = mtt_router(
        "rules",
        "explain",
        "--rules",
        EXAMPLE,
        "--at",
        "2027-01-11T17:30Z",
        "--callee",
        "8 (499) 649-78-03",
        "--json",
        "89219462761",
        "--busy",
        "883140777380595",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "terminate"
    assert data["targets"] == []
    assert data["at"] == "2027-01-11T20:30:00+03:00"
    assert data["callee"] == "74996497803"
    assert data["reasons"] == [
        "caller 79219462761 is client of ivanov",
        "ivanov is off schedule (office: mon-fri 09:00-18:00; sat 10:00-14:00)",
        "deputy petrova is off schedule (office: mon-fri 09:00-18:00; sat 10:00-14:00)",
        "fallback sidorov is busy (workplace 883140777380595 is on a call)",
        "no manager available: terminate (otherwise: pbx), the PBX routes it now",
    ]


def test_explain_prefix_caller_with_local_time() -> None:
    """A naive --at is rules-local time; a St Petersburg number matches the +7812 prefix."""
    result = mtt_router(
        "rules", "explain", "--rules", EXAMPLE, "78124240000@pstn", "--at", "2027-01-11T12:00"
    )
    assert result.returncode == 0, result.stderr
    assert "decision:  transfer to petrova (Мария Петрова) at 883140582526566 [prefix]" in (
        result.stdout.splitlines()
    )


def test_explain_with_invalid_rules(broken: str) -> None:
    """Invalid rules: the problems are printed and the exit code is 1."""
    result = mtt_router("rules", "explain", "--rules", broken, "89219462761")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f'{broken}:6: manager ivanov: unknown schedule "ofice" (none are defined)'
    )


def test_explain_bad_at_is_usage_error() -> None:
    """An unparseable --at is bad usage: exit 2 with the reason on stderr."""
    result = mtt_router("rules", "explain", "--rules", EXAMPLE, "101", "--at", "tomorrow")
    assert result.returncode == 2
    assert "not an ISO-8601 date-time: 'tomorrow'" in result.stderr
    assert result.stdout == ""


def test_rules_without_action_is_usage_error() -> None:
    """`mtt-router rules` alone prints help and exits 2."""
    result = mtt_router("rules")
    assert result.returncode == 2
    assert "check" in result.stderr
    assert "explain" in result.stderr


# The same commands in-process, through router.cli.main (fast, and measured by coverage).


def test_main_check(broken: str, capsys: pytest.CaptureFixture[str]) -> None:
    """main() returns 0 for a valid file and 1 with problem lines for an invalid one."""
    assert main(["rules", "check", str(ROOT / EXAMPLE)]) == 0
    assert capsys.readouterr().out.endswith("timezone: Europe/Moscow)\n")
    assert main(["rules", "check", broken]) == 1
    assert capsys.readouterr().out.count(f"{broken}:") == 4


def test_main_explain_wait_and_unknown_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable caller with nobody available and otherwise: wait prints a wait decision."""
    rules = tmp_path / "wait.yaml"
    example = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    rules.write_text(example.replace("otherwise: pbx", "otherwise: wait"), encoding="utf-8")
    (tmp_path / "clients.csv").write_bytes((ROOT / "rules" / "clients.csv").read_bytes())
    code = main(
        ["rules", "explain", "--rules", str(rules), "anonymous", "--workplaces", "883140777716581"]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "caller:    'anonymous' (unreadable)"
    assert "decision:  wait (no command: the PBX routes the call when parking ends)" in out
    assert "  - fallback sidorov has workplace 883140777380595, not listed by MTT" in out


def test_main_explain_json_without_callee(capsys: pytest.CaptureFixture[str]) -> None:
    """--json output carries the rules summary; callee is null when not given."""
    code = main(["rules", "explain", "--rules", str(ROOT / EXAMPLE), "", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["callee"] is None
    assert data["caller"] is None
    assert data["rules"]["counts"]["managers"] == 4
    assert data["reasons"][0] == "caller number is missing: treated as an unknown caller"


def test_main_bad_at_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses a bad --at with exit status 2."""
    with pytest.raises(SystemExit) as info:
        main(["rules", "explain", "--rules", EXAMPLE, "101", "--at", "31.12.2027"])
    assert info.value.code == 2
    assert "not an ISO-8601 date-time" in capsys.readouterr().err


def test_main_check_json(broken: str, capsys: pytest.CaptureFixture[str]) -> None:
    """check --json in-process: ok with a summary, or the problems with their lines."""
    assert main(["rules", "check", "--json", str(ROOT / EXAMPLE)]) == 0
    assert json.loads(capsys.readouterr().out)["timezone"] == "Europe/Moscow"
    assert main(["rules", "check", "--json", broken]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0] == {
        "line": 6,
        "message": 'manager ivanov: unknown schedule "ofice" (none are defined)',
    }


def test_main_explain_transfer_and_terminate(capsys: pytest.CaptureFixture[str]) -> None:
    """The human-readable explain names the target, the spare targets and the reasons."""
    args = ["rules", "explain", "--rules", str(ROOT / EXAMPLE), "--callee", "74996497803"]
    assert main([*args, "+7 903 555-01-02", "--at", "2027-01-13T11:00+03:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "line:      74996497803: the top-level fallback"
    assert (
        out[3] == "decision:  transfer to kuznetsova (Анна Кузнецова) at 883140777446532 [client]"
    )
    assert out[4].startswith("then:                  petrova")
    assert main([*args, "101", "--at", "2027-01-13T11:00", "--busy", "883140777380595"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "decision:  terminate (terminateCall: the PBX routes the call its usual way now)" in out
