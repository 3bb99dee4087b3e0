"""``mtt-router demo``: the simulator and the daemon together, routing a mix of client calls.

Everything runs in this process on loopback: the MTT simulator, the daemon (memory storage, the
packaged example rules), the OAuth login through the daemon's own ``/oauth/start``. The clock that
schedules see is pinned to a working Tuesday, 11:00 in Moscow, so the mix is the same at any hour:
known clients reach their manager, St Petersburg numbers match the ``+7812`` prefix, unknown callers
go to the duty manager, Kuznetsova's clients find her off schedule (she works Mon/Wed/Fri) and
reach her deputy, and a manager already on a call is skipped. Then two scripted calls show rules
version 2 at work (:mod:`router.demo_story`): a lesson learned from a conversation routes the
caller's next call, and a call nobody picks up moves on to the deputy. The example's ``lookup`` is
commented out (its CRM does not exist), so the demo needs no network.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import aiohttp

from router.config import Config, parse_config
from router.daemon import serve
from router.demo_story import DEMO_TIMINGS_NOTE, Story, demo_rules_text, play
from router.exits import Exit
from router.logs import setup_cli_logging, setup_daemon_logging
from router.numbers import normalize
from router.rules.loader import (
    EXAMPLE_CLIENTS,
    EXAMPLE_RULES,
    example_clients_text,
    example_rules_text,
    load_rules,
)
from router.rules.model import Rules
from router.simulator import CallOutcome, SimCall, SimConfig, serve_simulator

DEMO_TIME = datetime(2027, 1, 12, 11, 0, tzinfo=ZoneInfo("Europe/Moscow"))
"""A Tuesday: the office is open, the part-timer is not."""

KINDS = ("known client", "prefix +7812", "off-schedule client", "unknown caller")


@dataclass
class Tally:
    """Outcomes of one kind of caller."""

    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class DemoResult:
    """What the demo measured."""

    by_kind: dict[str, Tally]
    story: Story | None = None
    """Rules version 2 at work: a lesson learned, a no-answer re-route (``demo_story``)."""

    @property
    def total(self) -> Tally:
        out = Tally()
        for tally in self.by_kind.values():
            out.calls += tally.calls
            out.outcomes.update(tally.outcomes)
            out.latencies_ms.extend(tally.latencies_ms)
        return out

    def to_json(self) -> dict[str, Any]:
        rows = {kind: _row(t) for kind, t in self.by_kind.items()}
        story = self.story.to_json() if self.story is not None else None
        return {"kinds": rows, "total": _row(self.total), "story": story}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _row(t: Tally) -> dict[str, Any]:
    return {
        "calls": t.calls,
        "personal": t.outcomes["personal"],
        "fallback": t.outcomes["fallback"],
        "to_pbx": t.outcomes["to_pbx"],
        "missed_window": t.outcomes["missed"],
        "p50_ms": _percentile(t.latencies_ms, 50),
        "p99_ms": _percentile(t.latencies_ms, 99),
    }


def _callers(rules: Rules, rng: random.Random) -> dict[str, list[str]]:
    off_duty = {
        m.id for m in rules.managers.values() if m.schedule and not m.schedule.is_open(DEMO_TIME)
    }
    known = [n for n, m in rules.clients.items() if m not in off_duty and not n.startswith("7812")]
    return {
        "known client": known,
        "prefix +7812": [f"7812{rng.randrange(10**7):07d}" for _ in range(20)],
        "off-schedule client": [n for n, m in rules.clients.items() if m in off_duty],
        "unknown caller": [f"7999{rng.randrange(10**7):07d}" for _ in range(20)],
    }


def classify(call: SimCall, personal_workplace: str | None) -> str:
    """personal / fallback / to_pbx / missed for one finished call."""
    if call.outcome is CallOutcome.TRANSFERRED and call.command is not None:
        return "personal" if call.command.workplace == personal_workplace else "fallback"
    if call.outcome is CallOutcome.TERMINATED:
        return "to_pbx"
    return "missed"


def _personal_workplace(rules: Rules, caller: str) -> str | None:
    number = normalize(caller)
    manager = rules.clients.get(number)
    if manager is None and (hit := rules.match_prefix(number)) is not None:
        manager = hit[1]
    return rules.managers[manager].workplace if manager else None


def _config(workdir: Path, sim_url: str, public: int, admin: int) -> Config:
    sim = SimConfig()
    return parse_config(
        {
            "mtt": {
                "client_id": sim.client_id,
                "client_secret": sim.client_secret,
                "redirect_uri": f"http://127.0.0.1:{public}/mtt",
                "oauth_url": sim_url,
                "api_url": sim_url,
            },
            "server": {"listen": f"127.0.0.1:{public}", "admin_listen": f"127.0.0.1:{admin}"},
            "tokens_file": str(workdir / "tokens.json"),
            "rules": {"source": "file", "path": str(workdir / EXAMPLE_RULES)},
            "routing": {"park": "all"},
        },
        env={},
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_demo(
    calls: int = 40, rate: float = 10.0, out: TextIO | None = None, seed: int = 7
) -> DemoResult:
    """Run the whole demo; print progress to ``out`` (None: silent). Logging is the caller's."""
    rng = random.Random(seed)
    text = demo_rules_text(example_rules_text())
    rules = load_rules(text, EXAMPLE_RULES, clients_text=example_clients_text())
    pools = _callers(rules, rng)
    with tempfile.TemporaryDirectory(prefix="mtt-router-demo-") as tmp:
        workdir = Path(tmp)
        (workdir / EXAMPLE_RULES).write_text(text, encoding="utf-8")
        (workdir / EXAMPLE_CLIENTS).write_text(example_clients_text(), encoding="utf-8")
        sim_config = SimConfig(answer_after_ms=80.0, talk_ms=400.0, record_delay_ms=20.0)
        async with serve_simulator(sim_config) as sim:
            public, admin = _free_port(), _free_port()
            config = _config(workdir, sim.url, public, admin)
            stop, ready = asyncio.Event(), asyncio.Event()
            daemon = asyncio.create_task(
                serve(config, stop=stop, on_ready=lambda _: ready.set(), clock=lambda: DEMO_TIME)
            )
            try:
                await asyncio.wait_for(ready.wait(), 10)
                sim.webhook_url = f"http://127.0.0.1:{public}/mtt/events"
                await _login(admin)
                result = await _place_calls(sim, rules, pools, calls, rate, rng, out)
                result.story = await play(sim, rules)
                return result
            finally:
                stop.set()
                await daemon


async def _login(admin_port: int) -> None:
    """The operator's step: open /oauth/start (the simulator approves at once), wait for ready."""
    base = f"http://127.0.0.1:{admin_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/oauth/start") as response:
            if response.status != 200:
                raise RuntimeError(f"login failed: HTTP {response.status}")
        for _ in range(100):
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("the daemon did not become ready")


async def _place_calls(
    sim: Any,
    rules: Rules,
    pools: dict[str, list[str]],
    calls: int,
    rate: float,
    rng: random.Random,
    out: TextIO | None,
) -> DemoResult:
    by_kind = {kind: Tally() for kind in KINDS}
    number = sorted(sim.pbx.numbers)[0]
    weights = (5, 2, 1, 2)
    progress = _Progress(out, calls)

    async def one(kind: str, caller: str) -> None:
        call = sim.start_call(caller, number)
        await call.wait_outcome()
        tally = by_kind[kind]
        tally.outcomes[classify(call, _personal_workplace(rules, caller))] += 1
        if call.decision_latency_s is not None:
            tally.latencies_ms.append(call.decision_latency_s * 1000)
        progress.update(by_kind)
        await call.wait_done()  # the scripted calls that follow find everyone free

    tasks = []
    for _ in range(calls):
        kind = rng.choices(KINDS, weights)[0]
        by_kind[kind].calls += 1
        tasks.append(asyncio.create_task(one(kind, rng.choice(pools[kind]))))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)
    progress.done()
    return DemoResult(by_kind=by_kind)


class _Progress:
    """One live line on a terminal; a line per 10 calls otherwise."""

    def __init__(self, out: TextIO | None, calls: int) -> None:
        self.out, self.calls, self.seen = out, calls, 0
        self.tty = bool(out and out.isatty())

    def update(self, by_kind: dict[str, Tally]) -> None:
        self.seen += 1
        if self.out is None or (not self.tty and self.seen % 10 and self.seen != self.calls):
            return
        total = DemoResult(by_kind).total
        p50 = _percentile(total.latencies_ms, 50)
        line = (
            f"[{self.seen:>3}/{self.calls}] personal {total.outcomes['personal']}  "
            f"fallback {total.outcomes['fallback']}  to PBX {total.outcomes['to_pbx']}  "
            f"missed {total.outcomes['missed']}  p50 {p50 or 0:.1f} ms"
        )
        self.out.write(("\r" + line) if self.tty else line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.out is not None and self.tty:
            self.out.write("\n")


def format_table(result: DemoResult) -> str:
    """The final table."""
    header = ("", "calls", "personal", "fallback", "to PBX", "missed", "p50 ms", "p99 ms")
    rows: list[tuple[str, ...]] = [header]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for kind, tally in [*result.by_kind.items(), ("total", result.total)]:
        r = _row(tally)
        counts = [str(r[k]) for k in ("calls", "personal", "fallback", "to_pbx", "missed_window")]
        rows.append((kind, *counts, fmt(r["p50_ms"]), fmt(r["p99_ms"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(calls: int, rate: float, as_json: bool, write: Callable[[str], Any] = print) -> int:
    """Run the demo and print the table (or JSON); 0 when no call missed the window."""
    out = None if as_json else sys.stdout
    if out is not None:
        write(
            f"mtt-router demo: simulator + daemon on loopback, {calls} calls at {rate:g}/s, "
            f"clock pinned to {DEMO_TIME:%A %Y-%m-%d %H:%M} Moscow time"
        )
    log_path = Path(tempfile.gettempdir()) / "mtt-router-demo.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        # The in-process daemon logs as in production (JSON lines), to the file, not the screen.
        setup_daemon_logging("json", "info", stream=log_file)
        try:
            result = asyncio.run(run_demo(calls, rate, out))
        finally:
            setup_cli_logging("warning")  # the file closes next; the rest is an interactive run
    if as_json:
        import json

        write(json.dumps(result.to_json(), indent=2))
    else:
        write("")
        write(format_table(result))
        write("")
        write("personal: transferred to the caller's own manager (client list or prefix);")
        write("fallback: to a deputy or the duty manager; to PBX: released with terminateCall;")
        write("missed: no command inside MTT's 5 s parking window.")
        if result.story is not None:
            write("")
            write(f"Rules version 2 at work ({DEMO_TIMINGS_NOTE}):")
            for line in result.story.lines():
                write(f"  {line}")
        write(f"Daemon log (one JSON line per decision, with reasons): {log_path}")
    return Exit.OK if result.total.outcomes["missed"] == 0 else Exit.FAILED
