"""``mtt-router bench``: the daemon under load from the MTT simulator, measured as MTT sees it.

The simulator (in the bench's process) places calls at a fixed rate, each with the full
notification lifecycle (trying -> transferCall -> showing -> connected -> finished -> recorded),
against a daemon started as a subprocess on generated rules and a pre-seeded tokens file (or an
already running one: ``daemon_url``/``admin_url``). Each run reports calls sent, routed and
missed, decision latency p50/p90/p99/max measured at the simulator (``trying`` sent ->
transferCall received), the daemon's CPU per routed call (``/proc/<pid>/stat`` over the window)
and its RSS; repeated runs are summarised by their medians.
"""

from __future__ import annotations

from router.bench.files import callers, rules_yaml, write_daemon_files
from router.bench.load import RunResult
from router.bench.runner import BenchError, BenchReport, BenchSettings, run_bench

__all__ = [
    "BenchError",
    "BenchReport",
    "BenchSettings",
    "RunResult",
    "callers",
    "rules_yaml",
    "run_bench",
    "write_daemon_files",
]
