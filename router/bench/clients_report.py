"""What ``bench --clients-file`` measured: phases of calls, the report and its targets, the
daemon's ``rules_loaded`` lines, the machine's CPU pressure."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from router.bench.load import percentile
from router.simulator import CallOutcome
from router.simulator.records import SimCall

TARGETS = {"load_s": 5.0, "p99_ratio": 2.0, "rss_growth_mb": 300.0}
"""What a million rows must stay within on a 2-core machine."""
RSS_POINTS = ("small_csv", "loaded", "after_reloads")
PRESSURE = Path("/proc/pressure/cpu")


@dataclass
class Phase:
    """Decision latency of the calls placed in one phase (ms at the simulator)."""

    name: str
    calls: list[SimCall]
    windows: list[tuple[float, float]] = field(default_factory=list)
    """Wall-clock spans of the loads in this phase: calls inside them are also shown apart."""

    @staticmethod
    def _summary(calls: list[SimCall]) -> dict[str, Any]:
        lat = sorted(
            x * 1000.0 for c in calls if (x := c.decision_latency_s) is not None and not c.late
        )
        routed = sum(
            1 for c in calls if c.outcome in (CallOutcome.TRANSFERRED, CallOutcome.TERMINATED)
        )
        return {
            "sent": len(calls),
            "routed": routed,
            "missed": len(calls) - routed,
            "p50_ms": _r(percentile(lat, 50)),
            "p99_ms": _r(percentile(lat, 99)),
            "max_ms": _r(lat[-1] if lat else None),
        }

    def in_load(self) -> list[SimCall]:
        """The calls whose ``trying`` was sent while a load was running."""
        return [
            c
            for c in self.calls
            if (at := c.trying_sent_at_wall) is not None
            and any(a <= at <= b for a, b in self.windows)
        ]

    def to_json(self) -> dict[str, Any]:
        """The phase's numbers (and those of the calls in a load, when there were loads)."""
        out = self._summary(self.calls)
        if self.windows:
            out["in_load"] = self._summary(self.in_load())
        return out


@dataclass
class ClientsFileReport:
    """Everything measured, and how it compares with :data:`TARGETS`."""

    settings: dict[str, Any]
    first_load_s: float | None
    reload_s: list[float]
    reload_cpu_s: list[float]
    rss_mb: dict[str, float | None]
    steady: Phase
    reloading: Phase
    seconds_loading: float
    reloading_s: float
    pressure: dict[str, float | None]
    """CPU pressure (``some``, % of the time a task waited for a CPU) during each phase: the
    machine's other work shows here."""
    control: Phase | None = None
    """Rounds in which another process did the same load (the daemon none): what that work
    costs decisions on this machine when it is not the daemon's."""

    def checks(self) -> dict[str, Any]:
        """Each target: the measured value, the limit, and whether it held."""
        loads = [x for x in (self.first_load_s, *self.reload_s) if x is not None]
        base = self.steady.to_json()["p99_ms"]
        during = self.reloading.to_json()
        worst = max(
            (v for v in (during["p99_ms"], during.get("in_load", {}).get("p99_ms")) if v),
            default=None,
        )
        before, after = self.rss_mb.get("small_csv"), self.rss_mb.get("after_reloads")
        values = {
            "load_s": max(loads) if loads else None,
            "p99_ratio": round(worst / base, 2) if worst and base else None,
            "rss_growth_mb": round(after - before, 1) if after and before else None,
        }
        return {
            name: {"value": v, "limit": TARGETS[name], "ok": v is not None and v <= TARGETS[name]}
            for name, v in values.items()
        }

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``--json``."""
        return {
            "settings": self.settings,
            "first_load_s": self.first_load_s,
            "reloads": len(self.reload_s),
            "reload_s": self.reload_s,
            "reload_cpu_s": self.reload_cpu_s,
            "seconds_loading": round(self.seconds_loading, 2),
            "reloading_phase_s": round(self.reloading_s, 2),
            "rss_mb": self.rss_mb,
            "cpu_pressure": self.pressure,
            "steady": self.steady.to_json(),
            "during_reloads": self.reloading.to_json(),
            "control": None if self.control is None else self.control.to_json(),
            "targets": self.checks(),
        }

    def text(self) -> str:
        """The table."""
        s, d = self.steady.to_json(), self.reloading.to_json()
        i = d.get("in_load", {})
        loads, cpu = sorted(self.reload_s), sorted(self.reload_cpu_s)
        p = self.pressure
        rows = [
            ("rows in clients_file", f"{self.settings['rows']:,}"),
            ("first load (s)", _show(self.first_load_s)),
            ("reloads: count, min/median/max (s)", f"{len(loads)}, " + _spread(loads)),
            ("  CPU of each: min/median/max (s)", _spread(cpu)),
            ("time spent loading in the reload phase",
             f"{self.seconds_loading:.1f} of {self.reloading_s:.1f} s"),
            ("decisions, no reload: sent, p50/p99/max ms",
             f"{s['sent']}, {_show(s['p50_ms'])}/{_show(s['p99_ms'])}/{_show(s['max_ms'])}"),
            ("decisions, reload phase: sent, p50/p99/max ms",
             f"{d['sent']}, {_show(d['p50_ms'])}/{_show(d['p99_ms'])}/{_show(d['max_ms'])}"),
            ("  of them in a load: sent, p50/p99/max ms",
             f"{i.get('sent', 0)}, {_show(i.get('p50_ms'))}/{_show(i.get('p99_ms'))}/"
             f"{_show(i.get('max_ms'))}"),
            ("missed (no reload / reload phase)", f"{s['missed']} / {d['missed']}"),
            ("RSS MB: small CSV, loaded, after reloads",
             ", ".join(_show(self.rss_mb.get(k)) for k in RSS_POINTS)),
            ("CPU pressure % (others' work): no reload, reloads",
             f"{_show(p.get('steady'))}, {_show(p.get('reloading'))}"),
        ]  # fmt: skip
        if self.control is not None:
            c = self.control.to_json()
            ci = c.get("in_load", {})
            rows += [
                ("control, same load elsewhere: sent, p50/p99/max ms",
                 f"{c['sent']}, {_show(c['p50_ms'])}/{_show(c['p99_ms'])}/{_show(c['max_ms'])}"),
                ("  of them in a load: sent, p50/p99/max ms",
                 f"{ci.get('sent', 0)}, {_show(ci.get('p50_ms'))}/{_show(ci.get('p99_ms'))}/"
                 f"{_show(ci.get('max_ms'))}"),
                ("  CPU pressure %", _show(p.get("control"))),
            ]  # fmt: skip
        for name, check in self.checks().items():
            verdict = "ok" if check["ok"] else "OVER"
            rows.append(
                (f"target {name} <= {check['limit']:g}", f"{_show(check['value'])} {verdict}")
            )
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _show(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{values[0]:g}/{values[len(values) // 2]:g}/{values[-1]:g}"


class Logged(NamedTuple):
    """One ``rules_loaded`` line of the daemon's log."""

    ended: float
    load_s: float
    cpu_s: float | None
    clients: int


def loads_in_log(log: Path) -> list[Logged]:
    """Every ``rules_loaded`` line in the daemon's log."""
    found = []
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        if '"rules_loaded"' not in line:
            continue
        try:
            entry = json.loads(line)
            ended = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            cpu = entry.get("load_cpu_s")
            found.append(
                Logged(ended, float(entry["load_s"]), cpu and float(cpu), int(entry["clients"]))
            )
        except (ValueError, KeyError, TypeError):
            continue
    return found


def cpu_pressure() -> float | None:
    """Total microseconds some task waited for a CPU (``/proc/pressure/cpu``), or ``None``."""
    try:
        first = PRESSURE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for part in first.split():
        if part.startswith("total="):
            return float(part.removeprefix("total="))
    return None


class Tally:
    """Calls and wall-clock spans of one kind of round, and the CPU pressure over them."""

    def __init__(self) -> None:
        self.calls: list[SimCall] = []
        self.spans: list[tuple[float, float]] = []
        self.waited_us = 0.0
        self.pressure_known = True

    async def run(self, work: Awaitable[list[SimCall]]) -> None:
        """One round: ``work`` places calls and returns them once they are over."""
        started, before = time.time(), cpu_pressure()
        self.calls += await work
        ended, after = time.time(), cpu_pressure()
        self.spans.append((started, ended))
        if before is None or after is None:
            self.pressure_known = False
        else:
            self.waited_us += after - before

    def seconds(self) -> float:
        """Wall-clock seconds of its rounds."""
        return sum(b - a for a, b in self.spans)

    def pressure(self) -> float | None:
        """CPU pressure over its rounds (% of the time some task waited for a CPU)."""
        seconds = self.seconds()
        if not self.pressure_known or not seconds:
            return None
        return round(100.0 * self.waited_us / 1e6 / seconds, 1)
