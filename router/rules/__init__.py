"""Routing rules: the model, the YAML loader (errors with line numbers), working-hour schedules."""

from __future__ import annotations

from router.rules.loader import (
    example_rules_text,
    load_example_rules,
    load_rules,
    load_rules_file,
)
from router.rules.model import FORMAT_VERSION, Manager, Otherwise, Rules
from router.rules.schedule import Schedule

__all__ = [
    "FORMAT_VERSION",
    "Manager",
    "Otherwise",
    "Rules",
    "Schedule",
    "example_rules_text",
    "load_example_rules",
    "load_rules",
    "load_rules_file",
]
