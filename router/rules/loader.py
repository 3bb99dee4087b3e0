"""Rules file (format version 1) -> :class:`Rules`, or :class:`RulesError` naming every bad line.

The YAML is *composed* (not constructed): validation walks the node tree, so every problem carries
the line of its node, duplicate keys (which PyYAML would silently collapse) are caught, and scalars
are read as written (``09:00`` is not the sexagesimal integer 540, ``0079...`` is not octal).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from datetime import date
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from router.errors import RulesError
from router.numbers import NumberError, normalize, normalize_prefix
from router.rules import sections
from router.rules.client_table import ClientsRequest, read_clients
from router.rules.model import FORMAT_VERSION, FORMAT_VERSIONS, Manager, Otherwise, Rules
from router.rules.nodes import INT_TAG, Checker, is_null, line_of, value_of
from router.rules.read_schedule import read_schedule
from router.rules.schedule import Schedule
from router.rules.sections import ClientsReader

TOP_LEVEL_KEYS = (
    "version",
    "timezone",
    "managers",
    "schedules",
    "clients",
    "prefixes",
    "fallback",
    *sections.V2_KEYS,
)
MANAGER_KEYS = ("workplace", "name", "schedule", *sections.MANAGER_V2_KEYS)
FALLBACK_KEYS = ("managers", "otherwise")
EXAMPLE_RULES = "example_rules.yaml"  # in router/data/, a copy of rules/example.yaml
EXAMPLE_CLIENTS = "clients.csv"  # in router/data/, a copy of rules/clients.csv (its clients_file)

_ID = re.compile(r"^\w[\w.-]*$")
_DIGITS = re.compile(r"^[0-9]+$")


def load_rules(
    text: str,
    source: str = "<rules>",
    *,
    base: Path | None = None,
    clients_text: str | None = None,
    today: date | None = None,
    clients_reader: ClientsReader = read_clients,
) -> Rules:
    """Parse and validate rules; raise :class:`RulesError` listing *all* problems, with lines.

    ``clients_reader`` reads ``clients_file`` relative to ``base`` (the rules file's folder), or
    ``clients_text`` when it travels with the rules; ``today`` picks the calendar's years.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        message = f"not valid YAML: {exc.problem or exc}"
        if exc.context and exc.context_mark is not None:
            # The context often says where the real mistake began (an unclosed quote).
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise RulesError(source, [(line, message)]) from None
    except yaml.YAMLError as exc:
        raise RulesError(source, [(0, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise RulesError(source, [(1, "the rules file is empty (see rules/README.md)")])
    if not isinstance(root, MappingNode):
        raise RulesError(source, [(line_of(root), "the rules file must be a mapping of keys")])
    check = Checker()
    parser = _Parser(check, text, today or date.today())
    parser.clients_reader = clients_reader
    parser.clients_request = lambda name: ClientsRequest(
        name if base is None else base / name, clients_text, tuple(parser.manager_names)
    )
    rules = parser.parse(root)
    if check.problems or parser.file_problems or rules is None:
        raise RulesError(source, check.problems, parser.file_problems)
    return rules


class _Parser:
    """One pass over a rules document; cross-references use *declared* names, so a broken
    manager is reported once and not again at every client that names it."""

    clients_request: Callable[[Path], ClientsRequest]
    clients_reader: ClientsReader

    def __init__(self, check: Checker, text: str, today: date) -> None:
        self.check = check
        self.text = text
        self.today = today
        self.file_problems: list[tuple[str, int, str]] = []
        self.timezone = ZoneInfo("UTC")  # replaced by the file's; keeps schedules checkable
        self.schedule_names: set[str] = set()
        self.manager_names: set[str] = set()

    def parse(self, root: MappingNode) -> Rules | None:
        top = {
            key.value: (key, value)
            for key, value in self.check.items(root, "the rules file")
            if self._known(key, TOP_LEVEL_KEYS, "top level: ")
        }
        version = self._version(root, top.get("version"))
        tz_ok = self._timezone(root, top.get("timezone"))
        schedules = self._schedules(value_of(top.get("schedules")))
        managers_node = value_of(top.get("managers"))
        # Names first: a deputy may be a manager defined further down.
        self.manager_names = {key.value for key, _ in Checker().items(managers_node, "managers")}
        managers = self._managers(managers_node, schedules, version)
        clients = self._numbers(value_of(top.get("clients")), "clients", normalize, "client number")
        prefixes = self._numbers(value_of(top.get("prefixes")), "prefixes", _prefix, "prefix")
        fallback, otherwise = self._fallback(value_of(top.get("fallback")))
        v2 = sections.read_version2(
            self.check,
            top,
            version=version,
            manager_ref=self._manager_ref,
            fallback=self._fallback,
            clients=clients,
            request=self.clients_request,
            reader=self.clients_reader,
            today=self.today,
        )
        self.file_problems = list(v2.file_problems)
        if version is None or not tz_ok:
            return None
        return Rules(
            version=version,
            timezone=self.timezone,
            managers=managers,
            schedules=schedules,
            clients=clients if v2.file_clients is None else v2.file_clients.with_extra(clients),
            prefixes=prefixes,
            fallback=fallback,
            otherwise=otherwise,
            digest=hashlib.sha256(self.text.encode()).hexdigest()[:12],
            order=v2.order,
            calendar=v2.calendar,
            clients_file=v2.clients_file,
            learn=v2.learn,
            lookup=v2.lookup,
            no_answer=v2.no_answer,
            lines=v2.lines,
        )

    def _known(self, key: ScalarNode, allowed: tuple[str, ...], where: str) -> bool:
        if key.value in allowed:
            return True
        expected = ", ".join(allowed)
        self.check.fail(key, f'{where}unknown key "{key.value}" (expected one of: {expected})')
        return False

    def _version(self, root: Node, entry: tuple[ScalarNode, Node] | None) -> int | None:
        if entry is None:
            self.check.fail(root, f"version is missing (add: version: {FORMAT_VERSION})")
            return None
        node = entry[1]
        if isinstance(node, ScalarNode) and node.tag == INT_TAG:
            for known in FORMAT_VERSIONS:
                if node.value == str(known):
                    return known
        shown = "a list or mapping"
        if isinstance(node, ScalarNode):
            shown = node.value if node.tag == INT_TAG else f'"{node.value}" (text)'
        self.check.fail(node, f"version must be 1 or 2, got {shown}")
        return None

    def _timezone(self, root: Node, entry: tuple[ScalarNode, Node] | None) -> bool:
        if entry is None:
            self.check.fail(root, 'timezone is missing (e.g. timezone: "Europe/Moscow")')
            return False
        name = self.check.text(entry[1], "timezone")
        if name is None:
            return False
        try:
            self.timezone = ZoneInfo(name)
        except (KeyError, ValueError, OSError):
            self.check.fail(
                entry[1], f'unknown timezone "{name}": use an IANA name like Europe/Moscow'
            )
            return False
        return True

    def _name(self, key: ScalarNode, what: str) -> bool:
        if _ID.match(key.value):
            return True
        self.check.fail(key, f'bad {what} "{key.value}": use letters, digits, "_", "-" or "."')
        return False

    def _schedules(self, node: Node | None) -> dict[str, Schedule]:
        schedules: dict[str, Schedule] = {}
        for key, body in self.check.items(node, "schedules"):
            self.schedule_names.add(key.value)
            if self._name(key, "schedule name"):
                schedule = read_schedule(self.check, key.value, body, self.timezone)
                if schedule is not None:
                    schedules[key.value] = schedule
        return schedules

    def _managers(
        self, node: Node | None, schedules: dict[str, Schedule], version: int | None
    ) -> dict[str, Manager]:
        managers: dict[str, Manager] = {}
        for key, body in self.check.items(node, "managers"):
            if not self._name(key, "manager id"):
                continue
            manager = self._manager(key, body, schedules, version)
            if manager is not None:
                managers[manager.id] = manager
        return managers

    def _manager(
        self, key: ScalarNode, node: Node, schedules: dict[str, Schedule], version: int | None
    ) -> Manager | None:
        where = f"manager {key.value}"
        fields: dict[str, tuple[ScalarNode, Node]] = {}
        for field_key, value in self.check.items(node, where):
            if self._known(field_key, MANAGER_KEYS, f"{where}: "):
                fields[field_key.value] = (field_key, value)
        if not isinstance(node, MappingNode) and not is_null(node):
            return None  # already reported by items()
        before = len(self.check.problems)
        workplace = None
        if "workplace" not in fields:
            self.check.fail(key, f"{where}: workplace is missing (the SIP ID of the manager's РМ)")
        else:
            workplace = self.check.text(fields["workplace"][1], f"{where}: workplace")
            if workplace is not None and not _DIGITS.match(workplace):
                self.check.fail(
                    fields["workplace"][1],
                    f'{where}: workplace must be the digits of a SIP ID, got "{workplace}"'
                    " (see `mtt-router pbx workplaces`)",
                )
        name = None
        if "name" in fields and not is_null(fields["name"][1]):
            name = self.check.text(fields["name"][1], f"{where}: name")
        schedule = None
        if "schedule" in fields and not is_null(fields["schedule"][1]):
            schedule_node = fields["schedule"][1]
            schedule_name = self.check.text(schedule_node, f"{where}: schedule")
            if schedule_name is not None and schedule_name not in self.schedule_names:
                self.check.fail(
                    schedule_node,
                    f'{where}: unknown schedule "{schedule_name}"{_choices(self.schedule_names)}',
                )
            elif schedule_name is not None:
                schedule = schedules.get(schedule_name)
        deputy, absent = self._manager_v2(key.value, fields, version)
        if len(self.check.problems) > before or workplace is None:
            return None
        return Manager(key.value, workplace, name, schedule, deputy, absent)

    def _manager_v2(
        self, manager: str, fields: dict[str, tuple[ScalarNode, Node]], version: int | None
    ) -> tuple[str | None, tuple[tuple[date, date], ...]]:
        where = f"manager {manager}"
        if version == 1:
            for name in sections.MANAGER_V2_KEYS:
                if name in fields:
                    self.check.fail(fields[name][0], f"{where}: {name} needs version: 2")
            return None, ()
        deputy = None
        if "deputy" in fields and not is_null(fields["deputy"][1]):
            deputy = self._manager_ref(fields["deputy"][1], f"{where}: deputy")
            if deputy == manager:
                self.check.fail(fields["deputy"][1], f"{where}: deputy cannot be {manager} himself")
                deputy = None
        absent: tuple[tuple[date, date], ...] = ()
        if "absent" in fields:
            absent = sections.absences(self.check, fields["absent"][1], f"{where}: absent")
        return deputy, absent

    def _manager_ref(self, node: Node, where: str) -> str | None:
        manager = self.check.text(node, where)
        if manager is not None and manager not in self.manager_names:
            self.check.fail(
                node, f'{where}: unknown manager "{manager}"{_choices(self.manager_names)}'
            )
            return None
        return manager

    def _numbers(
        self, node: Node | None, where: str, norm: Callable[[str], str], what: str
    ) -> dict[str, str]:
        """``clients`` or ``prefixes``: number -> manager, unique after normalisation."""
        result: dict[str, str] = {}
        first: dict[str, tuple[int, str]] = {}
        for key, value in self.check.items(node, where):
            raw = key.value
            try:
                number = norm(raw)
            except NumberError:
                self.check.fail(key, f'{where}: bad {what} "{raw}": not a phone number')
                number = None
            if number is not None and number in first:
                line, first_raw = first[number]
                self.check.fail(
                    key,
                    f'{where}: duplicate {what} "{raw}" = {number} after normalisation '
                    f'(first on line {line} as "{first_raw}")',
                )
                number = None
            manager = self._manager_ref(value, f'{where}: "{raw}"')
            if number is not None:
                first[number] = (line_of(key), raw)
                if manager is not None:
                    result[number] = manager
        return result

    def _fallback(
        self, node: Node | None, where: str = "fallback"
    ) -> tuple[tuple[str, ...], Otherwise]:
        managers: list[str] = []
        otherwise = Otherwise.PBX
        for key, value in self.check.items(node, where):
            if not self._known(key, FALLBACK_KEYS, f"{where}: "):
                continue
            if key.value == "managers":
                if is_null(value):
                    continue
                for item, _ in self.check.texts(value, f"{where}.managers"):
                    manager = self._manager_ref(item, f"{where}.managers")
                    if manager is not None and manager in managers:
                        self.check.fail(item, f'{where}.managers: "{manager}" is listed twice')
                    elif manager is not None:
                        managers.append(manager)
            else:
                text = self.check.text(value, f"{where}.otherwise")
                if text is not None:
                    try:
                        otherwise = Otherwise(text)
                    except ValueError:
                        self.check.fail(
                            value, f'{where}.otherwise must be pbx or wait, got "{text}"'
                        )
        return tuple(managers), otherwise


def _prefix(raw: str) -> str:
    prefix = normalize_prefix(raw)
    if not _DIGITS.match(prefix):
        raise NumberError(raw)
    return prefix


def _choices(names: set[str]) -> str:
    if not names:
        return " (none are defined)"
    shown = sorted(names)
    more = f", ... {len(shown) - 8} more" if len(shown) > 8 else ""
    return f" (known: {', '.join(shown[:8])}{more})"


def load_rules_file(
    path: str | os.PathLike[str], *, clients_reader: ClientsReader = read_clients
) -> Rules:
    """Read and load a rules file (blocking: the daemon calls it in a thread); an unreadable
    file is a :class:`RulesError` too (line 0), so a reload has one error to catch."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8-sig") as f:  # -sig: Windows editors add a BOM
            text = f.read()
    except OSError as exc:
        raise RulesError(
            source, [(0, f"cannot read the rules file: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise RulesError(source, [(0, f"the rules file is not UTF-8 text: {exc.reason}")]) from None
    return load_rules(text, source, base=Path(source).parent, clients_reader=clients_reader)


def example_rules_text() -> str:
    """The example rules shipped inside the package (``router/data/example_rules.yaml``)."""
    return resources.files("router").joinpath("data", EXAMPLE_RULES).read_text(encoding="utf-8")


def example_clients_text() -> str:
    """The example's ``clients_file``, shipped beside it (``router/data/clients.csv``)."""
    return resources.files("router").joinpath("data", EXAMPLE_CLIENTS).read_text(encoding="utf-8")


def load_example_rules() -> Rules:
    """The example rules as :class:`Rules` (``mtt-router demo``), with their ``clients_file``."""
    text, source = example_rules_text(), f"<package>/data/{EXAMPLE_RULES}"
    return load_rules(text, source, clients_text=example_clients_text())
