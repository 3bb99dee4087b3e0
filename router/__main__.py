"""``python -m router`` is the same as the ``mtt-router`` console script."""

from __future__ import annotations

from router.cli import main

raise SystemExit(main())
