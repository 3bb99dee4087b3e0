"""``mtt-router rules explain`` for rules version 2, run as real processes on rules/example.yaml.

Every step is shown: which source of ``order`` named whom (and which were not consulted or not
asked), the deputy, an absence, a calendar day off and a working Saturday by decree, a line's own
fallback, ``otherwise``, what ``no_answer`` would do next, and the ``--json`` shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from router.config import load_config
from router.state.factory import open_stores
from router.state.learned_file import LearnedFile, learned_path
from tests.fixtures.crm import CrmStub, found

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "rules/example.yaml"
IVANOV_CLIENT = "+7 921 946-27-61"  # in the example's clients: ivanov (deputy petrova)
IVANOV, PETROVA, SIDOROV = "883140777716581", "883140582526566", "883140777380595"
MONDAY_10 = "2027-01-11T10:00+03:00"
THEN_PBX = ", then the PBX goes on with the call"
PLAN = "no answer within 20 s → deputy petrova, then fallback sidorov; at most 2 hops" + THEN_PBX


def explain(*args: str, rules: str = EXAMPLE) -> subprocess.CompletedProcess[str]:
    """``python -m router rules explain --rules RULES ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "router", "rules", "explain", "--rules", rules, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


def lines_of(*args: str, rules: str = EXAMPLE) -> list[str]:
    """The text report's lines (exit 0 asserted)."""
    result = explain(*args, rules=rules)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def json_of(*args: str, rules: str = EXAMPLE) -> dict[str, Any]:
    """The ``--json`` report (exit 0 asserted)."""
    result = explain(*args, "--json", rules=rules)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_the_deputy_takes_the_call_of_a_busy_manager_and_no_answer_goes_on() -> None:
    """Ivanov on a call: his deputy Petrova; if she does not answer in 20 s, the duty manager."""
    out = lines_of(IVANOV_CLIENT, "--at", MONDAY_10, "--busy", IVANOV)
    assert out[:4] == [
        "caller:    +7 921 946-27-61 -> 79219462761",
        "at:        2027-01-11 10:00 Mon (Europe/Moscow)",
        f"decision:  transfer to petrova (Мария Петрова) at {PETROVA} [deputy]",
        f"then:                  sidorov (Пётр Сидоров (дежурный)) at {SIDOROV} [fallback]",
    ]
    assert f"no answer: no answer within 20 s → fallback sidorov; at most 2 hops{THEN_PBX}" in out
    assert f"on a call: as given with --busy: {IVANOV}; others unknown to explain" in out
    why = out[out.index("why:") + 1 :]
    assert why == [
        "  - caller 79219462761 is client of ivanov",
        f"  - ivanov is busy (workplace {IVANOV} is on a call)",
        "  - deputy petrova is available",
        "  - fallback sidorov is available",
        f"  - transfer to petrova {PETROVA}",
    ]


def test_every_source_of_order_says_what_it_did_without_config() -> None:
    """The rules' clients named ivanov; the storage- and CRM-backed sources were not consulted,
    and once a source named the caller's manager the rest were not asked (version 2)."""
    out = lines_of(IVANOV_CLIENT, "--at", MONDAY_10)
    start = out.index("sources:   in order: clients, lookup, learned, prefixes")
    assert out[start + 1 : start + 8] == [
        "  clients:  ivanov",
        "              caller 79219462761 is client of ivanov",
        "              from clients in the rules file",
        "              client store (clients set, admin API): not consulted (no --config)",
        "  lookup:   not asked (clients named ivanov first)",
        "  learned:  not asked (clients named ivanov first)",
        "  prefixes: not asked (clients named ivanov first)",
    ]
    assert f"no answer: {PLAN}" in out
    assert any(line.startswith("on a call: unknown to explain") for line in out)


def test_an_unknown_caller_walks_every_source(tmp_path: Path) -> None:
    """Nobody names him: each source says why (lookup and learned need --config), then the
    fallback. A file with a lookup says the CRM was not consulted rather than absent."""
    out = lines_of("+7 999 000-00-00", "--at", MONDAY_10)
    start = out.index("sources:   in order: clients, lookup, learned, prefixes")
    assert out[start + 1 : start + 6] == [
        "  clients:  nobody",
        "              caller 79990000000 is not a listed client",
        "              client store (clients set, admin API): not consulted (no --config)",
        "  lookup:   not consulted (no lookup key in the rules)",
        "  learned:  not consulted (no --config)",
    ]
    assert out[start + 6 : start + 8] == ["  prefixes: nobody", "              no prefix matches"]
    assert (
        out[2]
        == f"decision:  transfer to sidorov (Пётр Сидоров (дежурный)) at {SIDOROV} [fallback]"
    )
    with_crm = tmp_path / "crm.yaml"
    text = (
        (ROOT / EXAMPLE)
        .read_text(encoding="utf-8")
        .replace(
            "# lookup:", 'lookup: {url: "https://crm.example.ru/m?caller={caller}"}\n# was lookup:'
        )
    )
    with_crm.write_text(text, encoding="utf-8")
    (tmp_path / "clients.csv").write_text((ROOT / "rules" / "clients.csv").read_text())
    assert "  lookup:   not consulted (no --config)" in lines_of(
        "+7 999 000-00-00", "--at", MONDAY_10, rules=str(with_crm)
    )


def test_an_absent_manager_hands_over_to_his_deputy() -> None:
    """Ivanov's vacation (12-25 July 2027) is named with its dates."""
    data = json_of(IVANOV_CLIENT, "--at", "2027-07-13T10:00+03:00")
    assert "ivanov is absent (2027-07-12 to 2027-07-25)" in data["reasons"]
    assert [(t["manager"], t["via"]) for t in data["targets"]] == [
        ("petrova", "deputy"),
        ("sidorov", "fallback"),
    ]
    assert (data["own"], data["deputy"]) == ("ivanov", "petrova")


def test_a_calendar_day_off_names_the_holiday() -> None:
    """5 January 2027 is a Russian New Year holiday: the office and the deputy are off."""
    out = lines_of(IVANOV_CLIENT, "--at", "2027-01-05T10:00:00+03:00")
    assert out[1] == (
        "at:        2027-01-05 10:00 Tue (Europe/Moscow), a day off (RU: New Year Holidays)"
    )
    assert "  - ivanov is off: 2027-01-05 is a day off (RU: New Year Holidays)" in out
    assert "  - deputy petrova is off: 2027-01-05 is a day off (RU: New Year Holidays)" in out
    assert out[2].startswith("decision:  transfer to sidorov")
    nobody_after = "no answer within 20 s → nobody after sidorov to try"
    assert f"no answer: {nobody_after}: the PBX goes on with the call" in out


def test_a_working_saturday_by_decree_has_the_weekday_hours() -> None:
    """20 February 2027 is worked by decree: at 16:00 the office is open (mon-fri hours); a week
    later, an ordinary Saturday, it closed at 14:00."""
    worked = json_of(IVANOV_CLIENT, "--at", "2027-02-20T16:00+03:00")
    assert worked["day"] == "a working Saturday by decree (RU): the mon-fri hours apply"
    assert worked["targets"][0]["manager"] == "ivanov"
    ordinary = json_of(IVANOV_CLIENT, "--at", "2027-02-27T16:00+03:00")
    assert ordinary["day"] is None
    assert ordinary["targets"][0]["manager"] == "sidorov"
    assert (
        "ivanov is off schedule (office: mon-fri 09:00-18:00; sat 10:00-14:00)"
        in (ordinary["reasons"])
    )


def test_a_line_with_its_own_fallback_and_otherwise() -> None:
    """The 8-800 line after hours with its duty manager busy: its own fallback, then its own
    otherwise (wait), not the top-level pbx."""
    out = lines_of(
        IVANOV_CLIENT,
        "--callee",
        "8 800 556-02-51",
        "--at",
        "2027-01-11T20:00+03:00",
        "--busy",
        SIDOROV,
    )
    assert out[1] == "line:      78005560251: its own fallback (lines)"
    assert "decision:  wait (no command: the PBX routes the call when parking ends)" in out
    assert "fallback:  petrova, sidorov; otherwise: wait" in out
    assert "no answer: nothing to re-route: the call is not transferred" in out
    assert "  - line 78005560251 has its own fallback" in out
    other_line = lines_of(IVANOV_CLIENT, "--callee", "+7 499 649-78-03", "--at", MONDAY_10)
    assert other_line[1] == "line:      74996497803: the top-level fallback"
    assert "fallback:  sidorov; otherwise: pbx" in other_line


def test_json_shape() -> None:
    """--json: the decision's fields, then every step explain adds."""
    data = json_of(IVANOV_CLIENT, "--at", MONDAY_10, "--callee", "74996497803")
    assert set(data) == {
        "action",
        "matched",
        "caller",
        "own",
        "deputy",
        "targets",
        "reasons",
        "at",
        "day",
        "callee",
        "order",
        "sources",
        "fallback",
        "no_answer",
        "presence",
        "config",
        "rules",
    }
    assert (data["action"], data["matched"], data["config"]) == ("transfer", "client", None)
    assert data["sources"][0] == {
        "name": "clients",
        "status": "named",
        "manager": "ivanov",
        "notes": [
            "caller 79219462761 is client of ivanov",
            "from clients in the rules file",
            "client store (clients set, admin API): not consulted (no --config)",
        ],
    }
    assert [s["status"] for s in data["sources"]] == [
        "named",
        "not asked",
        "not asked",
        "not asked",
    ]
    assert data["fallback"] == {"managers": ["sidorov"], "otherwise": "pbx", "line": None}
    assert data["no_answer"] == {
        "plan": PLAN,
        "after_s": 20.0,
        "max_hops": 2,
        "next": [
            {"manager": "petrova", "workplace": PETROVA, "via": "deputy"},
            {"manager": "sidorov", "workplace": SIDOROV, "via": "fallback"},
        ],
    }
    assert data["rules"]["version"] == 2
    assert data["rules"]["path"] == EXAMPLE


def test_a_client_from_clients_file_says_so() -> None:
    """A number of rules/clients.csv: the step names the file."""
    data = json_of("+7 985 111-00-77", "--at", MONDAY_10)
    assert data["sources"][0]["manager"] == "petrova"
    assert "from clients_file rules/clients.csv" in data["sources"][0]["notes"]


# -- with --config: the storage and the CRM the daemon would consult -------------------------

UNKNOWN_CALLER = "+7 999 000-00-00"  # in no list and no prefix of the example


def write_config(path: Path, storage: str) -> Path:
    """A config file with ``storage`` and its tokens file beside it."""
    path.write_text(
        "mtt:\n"
        '  client_id: "ccb350cc-6218-40b0-b134-3d290f00b9e7"\n'
        '  client_secret: "secret"\n'
        '  redirect_uri: "https://router.example.ru/mtt"\n'
        f'storage: "{storage}"\n'
        f'tokens_file: "{path.parent / "tokens.json"}"\n',
        encoding="utf-8",
    )
    return path


async def explain_async(*args: str, rules: str = EXAMPLE) -> tuple[int, str, str]:
    """``rules explain`` as a process while this test's loop serves (the CRM stub)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        "rules",
        "explain",
        "--rules",
        rules,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_with_config_memory_storage_reads_the_learned_file(tmp_path: Path) -> None:
    """Memory storage: what learn remembered (the file beside the tokens) names the caller's
    manager; the storage keeps no client map, and says so."""
    config = write_config(tmp_path / "config.yaml", "memory")
    learned = LearnedFile(learned_path(tmp_path / "tokens.json"))
    learned.remember("79990000000", "petrova", 86400.0)
    await learned.flush()
    code, out, err = await explain_async(UNKNOWN_CALLER, "--at", MONDAY_10, "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[2] == f"decision:  transfer to petrova (Мария Петрова) at {PETROVA} [learned]"
    start = lines.index("sources:   in order: clients, lookup, learned, prefixes")
    assert lines[start + 1 : start + 8] == [
        "  clients:  nobody",
        "              caller 79990000000 is not a listed client",
        "              client store (memory): none (this storage keeps no client map)",
        "  lookup:   not consulted (no lookup key in the rules)",
        "  learned:  petrova",
        "              caller 79990000000 talked to petrova before (learned)",
        "  prefixes: not asked (learned named petrova first)",
    ]
    # Without --config the same file is not consulted.
    code, out, _ = await explain_async(UNKNOWN_CALLER, "--at", MONDAY_10)
    assert "  learned:  not consulted (no --config)" in out.splitlines()


async def test_with_config_redis_reads_the_client_store_and_learned(
    tmp_path: Path, redis_url: str
) -> None:
    """Redis: a client-store edit overrides the rules' client; a learned entry names an unknown
    caller's manager; both read as the daemon reads them."""
    config = write_config(tmp_path / "config.yaml", redis_url)
    stores = await open_stores(load_config(config))
    try:
        assert stores.clients is not None
        assert stores.learned is not None
        await stores.clients.set(IVANOV_CLIENT, "petrova")
        stores.learned.remember("79990000000", "kuznetsova", 86400.0)
    finally:
        await stores.aclose()  # waits for the learned write
    code, out, err = await explain_async(
        IVANOV_CLIENT, "--at", MONDAY_10, "--config", str(config), "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["own"], data["targets"][0]["manager"], data["config"]) == (
        "petrova",
        "petrova",
        str(config),
    )
    assert data["sources"][0]["notes"] == [
        "caller 79219462761 is client of petrova (client store)",
        f"client store ({redis_url}): petrova",
    ]
    code, out, err = await explain_async(
        UNKNOWN_CALLER, "--at", MONDAY_10, "--config", str(config), "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert [(s["name"], s["status"], s["manager"]) for s in data["sources"]] == [
        ("clients", "nobody", None),
        ("lookup", "not consulted", None),
        ("learned", "named", "kuznetsova"),
        ("prefixes", "not asked", None),
    ]
    assert (
        data["sources"][0]["notes"][-1] == f"client store ({redis_url}): no entry for this caller"
    )
    assert (data["matched"], data["targets"][0]["manager"]) == ("learned", "kuznetsova")


async def test_with_config_the_crm_is_asked_once(tmp_path: Path, crm: CrmStub) -> None:
    """With a lookup key and --config the CRM is asked, once, and its answer decides; without
    --config it is not consulted and nothing reaches the CRM."""
    text = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    rules = tmp_path / "crm.yaml"
    rules.write_text(text.replace("# lookup:", f'lookup: {{url: "{crm.lookup_url}"}}\n#'))
    (tmp_path / "clients.csv").write_text((ROOT / "rules" / "clients.csv").read_text())
    crm.replies["79990000000"] = found("kuznetsova")
    config = write_config(tmp_path / "config.yaml", "memory")
    code, out, err = await explain_async(
        UNKNOWN_CALLER, "--at", MONDAY_10, "--rules", str(rules), "--callee", "74996497803"
    )
    assert code == 0, err
    assert "  lookup:   not consulted (no --config)" in out.splitlines()
    assert crm.requests == []
    code, out, err = await explain_async(
        UNKNOWN_CALLER,
        "--at",
        MONDAY_10,
        "--rules",
        str(rules),
        "--callee",
        "74996497803",
        "--config",
        str(config),
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "  lookup:   kuznetsova" in lines
    assert "              caller 79990000000 is client of kuznetsova (lookup)" in lines
    assert "  learned:  not asked (lookup named kuznetsova first)" in lines
    assert lines[3].startswith("decision:  transfer to kuznetsova")
    assert [r.query for r in crm.requests] == [{"caller": "79990000000", "line": "74996497803"}]


def test_a_bad_config_is_bad_usage(tmp_path: Path) -> None:
    """--config naming an invalid file: exit 2, the problem on stderr, nothing printed."""
    config = tmp_path / "config.yaml"
    config.write_text("mtt: {}\n", encoding="utf-8")
    result = explain(IVANOV_CLIENT, "--config", str(config))
    assert result.returncode == 2
    assert "mtt.client_id" in result.stderr
    assert result.stdout == ""


def test_with_config_an_unreachable_storage_is_said(tmp_path: Path) -> None:
    """Redis refusing connections: the decision is taken without the storage, as the daemon
    would, and the client store and learned say that it did not answer."""
    config = write_config(tmp_path / "config.yaml", "redis://127.0.0.1:1/0")
    data = json_of(UNKNOWN_CALLER, "--at", MONDAY_10, "--config", str(config))
    clients, _, learned, _ = data["sources"]
    assert clients["notes"][-1] == (
        "client store (redis://127.0.0.1:1/0): no answer (storage unreachable)"
    )
    assert (learned["status"], learned["notes"]) == (
        "nobody",
        ["the storage did not answer: decided without it"],
    )
    assert data["targets"][0]["manager"] == "sidorov"
