"""Which event loop runs the daemon (and the bench): uvloop when installed, else asyncio's.

uvloop (the ``fast`` extra: ``pip install 'mtt-router[fast]'``) roughly halves the CPU the event
loop and the sockets cost per notification. ``MTT_ROUTER_LOOP=asyncio`` forces the standard
loop (to compare, or to rule uvloop out when chasing a problem); ``uvloop`` insists on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOP_ENV = "MTT_ROUTER_LOOP"


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: what :func:`run` will use."""
    wanted = os.environ.get(LOOP_ENV, "auto").strip().lower()
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise RuntimeError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on the loop :func:`loop_name` picks."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
