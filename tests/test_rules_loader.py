"""Rules loader: a valid file loads; every problem is reported, each with its line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from router.errors import RulesError
from router.rules import (
    Otherwise,
    Rules,
    example_rules_text,
    load_example_rules,
    load_rules,
    load_rules_file,
)
from router.simulator import SimConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "rules" / "example.yaml"

VALID = """\
version: 1
timezone: "Europe/Moscow"
managers:
  ivanov:
    workplace: "883140777716581"
    name: "Иван Иванов"
    schedule: office
  petrova:
    workplace: "883140777716582"
schedules:
  office:
    mon-fri: "09:00-18:00"
clients:
  "+7 921 946-27-61": ivanov
prefixes:
  "+7812": petrova
fallback:
  managers: [petrova]
  otherwise: pbx
"""


def problems(text: str) -> list[str]:
    """The ``PATH:LINE: message`` lines for ``text`` (which must be invalid)."""
    with pytest.raises(RulesError) as info:
        load_rules(text, "r.yaml")
    return info.value.lines()


def replace(old: str, new: str) -> str:
    """VALID with one piece replaced (the piece must be there)."""
    assert old in VALID
    return VALID.replace(old, new)


def test_valid_rules_load() -> None:
    """A valid file gives normalised, cross-linked rules."""
    rules = load_rules(VALID)
    assert rules.version == 1
    assert rules.timezone.key == "Europe/Moscow"
    assert dict(rules.clients) == {"79219462761": "ivanov"}
    assert dict(rules.prefixes) == {"7812": "petrova"}
    assert rules.fallback == ("petrova",)
    assert rules.otherwise is Otherwise.PBX
    ivanov = rules.managers["ivanov"]
    assert (ivanov.workplace, ivanov.name, ivanov.label) == (
        "883140777716581",
        "Иван Иванов",
        "ivanov (Иван Иванов)",
    )
    assert ivanov.schedule is rules.schedules["office"]
    assert rules.managers["petrova"].schedule is None
    assert rules.counts() == {"managers": 2, "clients": 1, "prefixes": 1, "fallback": 1}
    assert len(rules.digest) == 12


def test_example_file_loads() -> None:
    """rules/example.yaml is valid and has the managers the demo expects."""
    rules = load_rules_file(EXAMPLE)
    assert set(rules.managers) == {"ivanov", "petrova", "sidorov", "kuznetsova"}
    # The simulator's default workplaces (the MTT document's SIP IDs), so the demo routes for real.
    assert {m.workplace for m in rules.managers.values()} == set(SimConfig().workplaces)
    assert rules.fallback == ("sidorov",)
    assert rules.otherwise is Otherwise.PBX
    assert rules.timezone.key == "Europe/Moscow"
    assert rules.match_prefix("78124241599") == ("7812", "petrova")
    assert rules.clients["79219462761"] == "ivanov"
    assert rules.managers["kuznetsova"].schedule is not None


def test_packaged_example_is_identical_to_rules_example() -> None:
    """router/data/example_rules.yaml is a byte-identical copy of rules/example.yaml."""
    packaged = ROOT / "router" / "data" / "example_rules.yaml"
    assert packaged.read_bytes() == EXAMPLE.read_bytes()
    assert example_rules_text() == EXAMPLE.read_text(encoding="utf-8")
    assert load_example_rules().digest == load_rules_file(EXAMPLE).digest


def test_unquoted_scalars_are_read_as_written() -> None:
    """Unquoted SIP IDs, times, dates, numbers and 'off' mean what they look like."""
    text = """\
version: 1
timezone: Europe/Moscow
managers:
  a:
    workplace: 883140777716581
    schedule: s
schedules:
  s:
    mon-fri: 09:00-18:00
    sat: off
    except: [2027-01-01]
clients:
  89219462761: a
  +78124241500: a
"""
    rules = load_rules(text)
    assert rules.managers["a"].workplace == "883140777716581"
    assert set(rules.clients) == {"79219462761", "78124241500"}
    assert rules.schedules["s"].text == "mon-fri 09:00-18:00; sat off"


def test_optional_sections_may_be_absent_or_empty() -> None:
    """Only version and timezone are required; empty sections are empty."""
    rules = load_rules("version: 1\ntimezone: UTC\nmanagers:\nclients: {}\nfallback:\n")
    assert rules.counts() == {"managers": 0, "clients": 0, "prefixes": 0, "fallback": 0}
    assert rules.otherwise is Otherwise.PBX


def test_otherwise_wait() -> None:
    """fallback.otherwise: wait is read."""
    assert load_rules(replace("otherwise: pbx", "otherwise: wait")).otherwise is Otherwise.WAIT


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("version: 1", "version: 3", "r.yaml:1: version must be 1 or 2, got 3"),
        ("version: 1", 'version: "1"', 'r.yaml:1: version must be 1 or 2, got "1" (text)'),
        ('timezone: "Europe/Moscow"', 'timezone: "Europe/Moskva"', "r.yaml:2: unknown timezone"),
        ('timezone: "Europe/Moscow"', "timezone: [x]", "r.yaml:2: timezone must be a single value"),
        (
            '"883140777716581"',
            '"SIP/101"',
            "r.yaml:5: manager ivanov: workplace must be the digits",
        ),
        ('"883140777716581"', '""', "r.yaml:5: manager ivanov: workplace must not be empty"),
        ('    workplace: "883140777716582"\n', "    name: P\n", "r.yaml:8: manager petrova: workp"),
        ("  petrova:\n", '  "petro va":\n', 'r.yaml:8: bad manager id "petro va"'),
        ("    schedule: office", "    schedule: ofice", "r.yaml:7: manager ivanov: unknown schedu"),
        (
            '    name: "Иван Иванов"',
            "    phone: 1",
            'r.yaml:6: manager ivanov: unknown key "phone"',
        ),
        (
            "  ivanov:\n    workplace",
            "  ivanov: 1\n  x:\n    workplace",
            "r.yaml:4: manager ivanov",
        ),
        ("mon-fri:", "mon-fry:", "r.yaml:12: schedule office: bad weekday 'mon-fry'"),
        ('"09:00-18:00"', '"09:00-25:00"', "r.yaml:12: schedule office: bad time in '09:00-25:00'"),
        ('"09:00-18:00"', '"9 to 6"', "r.yaml:12: schedule office: bad time range '9 to 6'"),
        ('"09:00-18:00"', '"09:00-18:00"\n    except: [2027-02-30]', "r.yaml:13: schedule office"),
        ('"09:00-18:00"', '"09:00-18:00"\n    fri: "10:00-11:00"', "r.yaml:13: schedule office:"),
        ('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": nobody', 'r.yaml:14: clients: "+7 9'),
        (
            '"+7 921 946-27-61": ivanov',
            '"call me": ivanov',
            "r.yaml:14: clients: bad client number",
        ),
        ('"+7812": petrova', '"+7812": sidorov', 'r.yaml:16: prefixes: "+7812": unknown manager'),
        ('"+7812": petrova', '"+7 81x": petrova', 'r.yaml:16: prefixes: bad prefix "+7 81x"'),
        ("managers: [petrova]", "managers: [sidorov]", "r.yaml:18: fallback.managers: unknown ma"),
        ("managers: [petrova]", "managers: [petrova, petrova]", 'r.yaml:18: fallback.managers: "'),
        ("otherwise: pbx", "otherwise: voicemail", "r.yaml:19: fallback.otherwise must be pbx or"),
        (
            "  otherwise: pbx",
            "  otherwise: pbx\n  retry: 3",
            'r.yaml:20: fallback: unknown key "retr',
        ),
        ("fallback:\n", "routes: 1\nfallback:\n", 'r.yaml:17: top level: unknown key "routes"'),
        ("clients:\n", "clients: [1]\nx:\n", "r.yaml:13: clients must be a mapping"),
    ],
)
def test_each_problem_names_its_line(old: str, new: str, expected: str) -> None:
    """Every kind of problem is reported on the line of the offending node."""
    lines = problems(replace(old, new))
    assert any(line.startswith(expected) for line in lines), lines


def test_missing_version_and_timezone() -> None:
    """version and timezone are required; the problem points at the start of the file."""
    assert problems("managers: {}\n") == [
        'r.yaml:1: timezone is missing (e.g. timezone: "Europe/Moscow")',
        "r.yaml:1: version is missing (add: version: 2)",
    ]


def test_unknown_manager_lists_the_known_ones() -> None:
    """An unknown manager names the ids that do exist, to spot the typo."""
    [line] = problems(replace('"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": ivanoff'))
    assert line == 'r.yaml:14: clients: "+7 921 946-27-61": unknown manager "ivanoff" ' + (
        "(known: ivanov, petrova)"
    )


def test_duplicate_number_after_normalisation_names_both_lines() -> None:
    """Two spellings of one number: the second line is reported, naming the first."""
    text = replace(
        '"+7 921 946-27-61": ivanov', '"+7 921 946-27-61": ivanov\n  "89219462761": petrova'
    )
    assert problems(text) == [
        'r.yaml:15: clients: duplicate client number "89219462761" = 79219462761 after '
        'normalisation (first on line 14 as "+7 921 946-27-61")'
    ]


def test_duplicate_prefix_after_normalisation() -> None:
    """Prefixes are compared after normalisation too."""
    text = replace('"+7812": petrova', '"+7812": petrova\n  "8812": ivanov')
    assert problems(text) == [
        'r.yaml:17: prefixes: duplicate prefix "8812" = 7812 after normalisation '
        '(first on line 16 as "+7812")'
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("fallback:\n", "version: 1\nfallback:\n", 'r.yaml:17: duplicate key "version" in the rul'),
        ("  petrova:\n", "  ivanov:\n", 'r.yaml:8: duplicate key "ivanov" in managers (first on l'),
        (
            '"+7 921 946-27-61": ivanov',
            '"+7 921 946-27-61": ivanov\n  "+7 921 946-27-61": petrova',
            'r.yaml:15: duplicate key "+7 921 946-27-61" in clients (first on line 14)',
        ),
        (
            '    mon-fri: "09:00-18:00"',
            '    mon-fri: "09:00-18:00"\n    mon-fri: "10:00-11:00"',
            'r.yaml:13: duplicate key "mon-fri" in schedule office (first on line 12)',
        ),
    ],
)
def test_duplicate_yaml_keys_are_detected(old: str, new: str, expected: str) -> None:
    """PyYAML would silently keep the last of two equal keys: the loader reports the second."""
    lines = problems(replace(old, new))
    assert any(line.startswith(expected) for line in lines), lines


def test_weekday_set_twice_across_keys() -> None:
    """A weekday in two keys of one schedule is ambiguous and names the first line."""
    lines = problems(replace('"09:00-18:00"', '"09:00-18:00"\n    fri,sat: "10:00-11:00"'))
    assert lines == ["r.yaml:13: schedule office: fri is already set on line 12"]


def test_all_problems_are_reported_at_once() -> None:
    """A file with many mistakes gets one line per mistake, in line order."""
    text = """\
version: 3
timezone: Mars/Base
managers:
  ivanov:
    workplace: "abc"
    schedule: nope
schedules:
  office:
    mon-fry: "09:00-18:00"
clients:
  "+7 921 946-27-61": ivanov
  "89219462761": ivanov
  "nonsense": ghost
fallback:
  managers: [ghost]
  otherwise: maybe
colour: blue
"""
    lines = problems(text)
    assert [line.split(":")[1] for line in lines] == [
        "1", "2", "5", "6", "9", "12", "13", "13", "15", "16", "17",
    ]  # fmt: skip


def test_yaml_syntax_error_names_its_line() -> None:
    """Broken YAML is one problem on the line where the parser gave up."""
    [line] = problems('version: 1\ntimezone: "Europe/Moscow\nmanagers: {}\n')
    assert line == (
        "r.yaml:4: not valid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar on line 2)"
    )
    [line] = problems("version: 1\ntimezone: UTC\nmanagers: a: b\n")
    assert line == "r.yaml:3: not valid YAML: mapping values are not allowed here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "r.yaml:1: the rules file is empty"),
        ("# nothing\n", "r.yaml:1: the rules file is empty"),
        ("- 1\n- 2\n", "r.yaml:1: the rules file must be a mapping"),
        ("---\nversion: 1\n---\nversion: 1\n", "r.yaml:3: not valid YAML"),
        ("version: 1\ntimezone: UTC\n<<: {a: 1}\n", "r.yaml:3: the rules file: merge keys"),
    ],
)
def test_not_a_rules_document(text: str, expected: str) -> None:
    """Empty files, lists and several documents are refused with a line."""
    lines = problems(text)
    assert lines[0].startswith(expected), lines


def test_unreadable_file_is_a_rules_error(tmp_path: Path) -> None:
    """A missing or non-UTF-8 file is a RulesError on line 0, so reloads catch one error type."""
    with pytest.raises(RulesError) as info:
        load_rules_file(tmp_path / "missing.yaml")
    assert info.value.lines()[0].startswith(f"{tmp_path / 'missing.yaml'}:0: cannot read")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("version: 1\n# é\n".encode("latin-1"))
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules_file(latin1)


def test_file_with_bom_loads(tmp_path: Path) -> None:
    """A UTF-8 BOM (Windows editors) is accepted; errors name the file path."""
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    assert load_rules_file(path).counts()["managers"] == 2
    path.write_text("version: 3\ntimezone: UTC\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules_file(path)
    assert info.value.lines() == [f"{path}:1: version must be 1 or 2, got 3"]


def test_rules_are_immutable() -> None:
    """Rules and their mappings cannot be changed after loading (a reload builds new ones)."""
    rules = load_rules(VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.otherwise = Otherwise.WAIT  # type: ignore[misc]
    with pytest.raises(TypeError):
        rules.clients["79990000000"] = "ivanov"  # type: ignore[index]


def test_longest_prefix_wins() -> None:
    """match_prefix returns the longest matching prefix, or None."""
    rules = Rules(
        version=1,
        timezone=load_rules(VALID).timezone,
        managers={},
        prefixes={"7": "a", "7812": "b", "781242": "c"},
    )
    assert rules.match_prefix("78124241500") == ("781242", "c")
    assert rules.match_prefix("78129999999") == ("7812", "b")
    assert rules.match_prefix("74950000000") == ("7", "a")
    assert rules.match_prefix("4930") is None
    assert rules.match_prefix("781") == ("7", "a")


README_MANAGERS = (
    "managers: {ivanov: {workplace: '1'}, petrova: {workplace: '2'}, sidorov: {workplace: '3'},"
    " kuznetsova: {workplace: '4'}}\n"
)
"""The managers a README fragment may name without defining them (rules/clients.csv too)."""


def test_readme_yaml_examples_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every YAML example in rules/README.md is valid: whole files as they are, fragments under
    the required keys (version 2, a superset of 1) with the managers they name; a
    ``clients_file`` is read beside the README, ``${CRM_TOKEN}`` from the environment."""
    monkeypatch.setenv("CRM_TOKEN", "s3cret")
    readme = (ROOT / "rules" / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 12
    versions = set()
    for block in blocks:
        text = block
        if not block.startswith("version:"):
            managers = "" if re.search(r"^managers:", block, re.MULTILINE) else README_MANAGERS
            text = f"version: 2\ntimezone: UTC\n{managers}{block}"
        versions.add(load_rules(text, "rules/README.md", base=ROOT / "rules").version)
    assert versions == {1, 2}  # version 1 stays documented
