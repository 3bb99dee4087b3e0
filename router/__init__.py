"""mtt-router: route every returning caller to their personal manager on the MTT Business PBX."""

from __future__ import annotations

__version__ = "0.1.0"
