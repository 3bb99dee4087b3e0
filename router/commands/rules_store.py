"""The ``rules`` group's extension hook (see :data:`router.commands.rules.RULES_ACTION_MODULES`).

``push`` and ``pull`` live in :mod:`router.commands.rules_redis`.
"""

from __future__ import annotations

from router.commands.rules_redis import register_rules

__all__ = ["register_rules"]
