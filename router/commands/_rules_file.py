"""A rules file loaded for a command (``rules check``, ``rules explain``, ``replay``): its problems
printed as ``PATH:LINE: message``, and the summary the JSON outputs share. Light imports only."""

from __future__ import annotations

import json
import sys
from typing import Any

from router.errors import RulesError
from router.rules.loader import load_rules_file
from router.rules.model import Rules


def load_rules_or_report(path: str) -> Rules | None:
    """Load ``path``; on problems print them (``PATH:LINE: message``) to stdout and return None."""
    try:
        return load_rules_file(path)
    except RulesError as exc:
        for line in exc.lines():
            print(line)
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return None


def rules_summary(rules: Rules) -> dict[str, Any]:
    """Version, time zone, digest, counts and ``otherwise``: what the JSON outputs show of rules."""
    return {
        "version": rules.version,
        "timezone": rules.timezone.key,
        "digest": rules.digest,
        "counts": rules.counts(),
        "otherwise": rules.otherwise.value,
    }


def print_json(data: dict[str, Any]) -> None:
    """Pretty JSON on stdout (names are Russian: UTF-8 as is)."""
    print(json.dumps(data, ensure_ascii=False, indent=2))
