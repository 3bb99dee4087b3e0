"""The Russian docs (README.ru.md, rules/README.ru.md) stay true to the program.

The English docs are the reference, and each Russian file says so at its top with a link. Every
link resolves to a file of the tree; every command line parses with the CLI's own parser and
every ``mtt-router WORD`` names a command; every config key named is one the config reader knows;
every rules example loads with the real rules loader (fragments on top of a complete file); every
metric named is registered.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import build_parser
from router.config import parse_config
from router.errors import ConfigError
from router.metrics import Metrics
from router.rules.loader import TOP_LEVEL_KEYS, load_rules

ROOT = Path(__file__).resolve().parents[1]
README_RU = ROOT / "README.ru.md"
RULES_RU = ROOT / "rules" / "README.ru.md"
DOCS = {README_RU: ROOT / "README.md", RULES_RU: ROOT / "rules" / "README.md"}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
COMMAND = re.compile(r"mtt-router((?: [a-z][a-z-]*){1,2})")
CONFIG_KEY = re.compile(r"`((?:mtt|server|routing|rules|log)\.[a-z_]+)")
METRIC = re.compile(r"\bmtt_router_[a-z_]+")
SECTIONS = ("mtt", "server", "routing", "rules", "log")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def blocks(path: Path, *languages: str) -> Iterator[str]:
    """The fenced code blocks of ``path`` in one of ``languages``."""
    for match in FENCE.finditer(text(path)):
        if match.group(1) in languages:
            yield match.group(2)


def prose(path: Path) -> str:
    """``path`` without its fenced code blocks."""
    return FENCE.sub("", text(path))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_says_at_its_top_that_the_english_doc_is_the_reference(doc: Path) -> None:
    top = "\n".join(text(doc).splitlines()[:8])
    assert "Справочником остаётся английская" in top
    linked = {(doc.parent / target).resolve() for target, _ in LINK.findall(top) if target}
    assert DOCS[doc] in linked


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_of_the_tree(doc: Path) -> None:
    found = [a or b for a, b in LINK.findall(prose(doc))]
    assert found
    for target in found:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), target
        assert path.exists(), f"{doc.name}: {target} does not exist"


def _subcommands(parser: Any) -> dict[str, Any]:
    for action in parser._actions:
        if action.choices is not None and isinstance(action.choices, dict):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_named_exists(doc: Path) -> None:
    """``mtt-router WORD [WORD]`` anywhere: a command (and an action of its group)."""
    commands = _subcommands(build_parser())
    named = COMMAND.findall(text(doc))
    assert named
    for words in named:
        first, *rest = words.split()
        assert first in commands, f"mtt-router {first}: no such command"
        actions = _subcommands(commands[first])
        if actions and rest:
            assert rest[0] in actions, f"mtt-router {first} {rest[0]}: no such action"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_parses(doc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``mtt-router ...`` line of a code block, as the CLI's parser reads it."""
    lines = [
        line.removeprefix("$ ")
        for block in blocks(doc, "sh", "console", "text")
        for line in block.splitlines()
        if line.removeprefix("$ ").startswith("mtt-router ")
    ]
    assert lines
    for line in lines:
        words = shlex.split(line, comments=True)
        for end, word in enumerate(words):
            if word in ("|", ">", ">>", "&&", ";"):
                words = words[:end]
                break
        try:
            build_parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"{doc.name}: does not parse: {line}\n{capsys.readouterr().err}")


def _unknown_keys(data: dict[str, Any]) -> list[str]:
    try:
        parse_config(data, env={})
    except ConfigError as exc:
        return [problem for problem in exc.problems if problem.endswith(": unknown key")]
    return []


def test_every_config_key_named_is_one_the_config_reader_knows() -> None:
    for doc in DOCS:
        for key in set(CONFIG_KEY.findall(text(doc))):
            section, name = key.split(".")
            assert _unknown_keys({section: {name: None}}) == [], f"{doc.name}: {key}"
    configs = [
        data
        for block in blocks(README_RU, "yaml")
        if isinstance(data := yaml.safe_load(block), dict) and set(data) & set(SECTIONS)
    ]
    assert configs
    for data in configs:
        assert _unknown_keys(data) == [], data


# -- the rules guide --------------------------------------------------------------------------

CLIENTS_CSV = "number,manager\n+7 916 200-30-40,ivanov\n+7 985 111-00-77,petrova\n"


class _Loader(yaml.SafeLoader):
    """YAML as the rules loader reads it: ``off`` (a schedule's day without hours) is text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _rules_examples() -> list[dict[str, Any]]:
    return [yaml.load(block, Loader=_Loader) for block in blocks(RULES_RU, "yaml")]


def _load(data: dict[str, Any]) -> None:
    load_rules(yaml.safe_dump(data, allow_unicode=True), "README.ru.md", clients_text=CLIENTS_CSV)


def test_every_rules_example_loads_with_the_real_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Complete files as they are; fragments merged into the guide's complete version-2 file
    (their managers, schedules and lines added to its own)."""
    monkeypatch.setenv("CRM_TOKEN", "a-token")
    examples = _rules_examples()
    complete = [data for data in examples if "version" in data]
    assert {data["version"] for data in complete} == {1, 2}
    for data in complete:
        _load(data)
    base = next(data for data in complete if data["version"] == 2)
    fragments = [data for data in examples if "version" not in data]
    assert len(fragments) >= 10
    for fragment in fragments:
        merged = copy.deepcopy(base)
        for key, value in fragment.items():
            if key in ("managers", "schedules", "lines") and isinstance(value, dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        _load(merged)


def test_the_rules_key_table_names_only_keys_the_loader_knows() -> None:
    table = re.findall(r"^\| `([a-z_.]+)` \| (?:1, 2|2) \|", text(RULES_RU), flags=re.MULTILINE)
    known = {*TOP_LEVEL_KEYS, "fallback.managers", "fallback.otherwise"}
    assert len(table) >= 10
    assert set(table) <= known


def test_every_metric_named_is_registered() -> None:
    registry = Metrics().registry
    known: set[str] = set()
    for family in registry.collect():
        known |= {family.name, f"{family.name}_total"}
        known |= {sample.name for sample in family.samples}
    for doc in DOCS:
        named = set(METRIC.findall(text(doc)))
        assert named <= known, f"{doc.name}: {sorted(named - known)}"
