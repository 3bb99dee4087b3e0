"""The status page, ``GET /`` on the admin listener: what a person sees, in a real browser too.

Each daemon test routes simulated calls through every kind of ending (a client's transfer, a
fallback manager's, a release to the PBX while the fallback manager is on a call, a shadow call)
and reads the page over plain HTTP (content, escaping, the admin token) or in Debian's headless
Chromium (the DOM it builds, and a phone-sized screenshot kept in the test's tmp dir;
``MTT_UPDATE_SCREENSHOT=1`` also copies it to ``docs/status-page.png`` for the README).
The history behind the page (:mod:`router.history`) is checked on its own with a fake clock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from router.history import MAX_EARLY, MAX_MANAGERS, OTHERS, RECENT, DecisionHistory
from router.simulator import SimConfig
from router.simulator.config import DOC_CLIENT_SECRET
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    OTHER_NUMBER,
    PETROVA_CLIENT,
    PETROVA_WP,
    SIDOROV_WP,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    finished,
    outcome_of,
)
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "status-page.png"
ADMIN_TOKEN = "status-page-admin-token-0123456789"
FALLBACK_CALLER = "+79990001122"
"""No client, no prefix: the fallback manager (sidorov) takes the call."""
RELEASED_CALLER = "+79990003344"
"""The same, while sidorov is on a call: nobody is left, the call goes back to the PBX."""
SCRIPT_CALLER = '<script>alert("x")</script>'
CALLERS = ("79219462761", "79990001122", "79990003344", "78124241500")
"""Every caller's number in full (normalised): masked, none of them may appear."""
BROWSER_S = 40.0


@pytest.fixture
async def sim_http() -> AsyncIterator[aiohttp.ClientSession]:
    """The fixtures' client session, carrying the admin token (ignored where none is set)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        yield session


@pytest.fixture
def sim_config() -> SimConfig:
    """1 s parking window; the PBX's own routing of the second line rings petrova first."""
    return daemon_sim_config(routes={OTHER_NUMBER: (PETROVA_WP,)})


async def route_calls(daemon: RunningDaemon) -> None:
    """A transfer, a fallback, a release and a shadow call (the second line is shadow), each
    answered where MTT's PBX would answer it."""
    sim = daemon.sim
    client = await sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(client) == "transferred"
    await finished(client)  # ivanov free again: the PBX's own routing rings him first
    # Sidorov stays on this call while the page is read: the next one finds him busy.
    fallback = await sim.place_call(FALLBACK_CALLER, NUMBER, talk_ms=60_000)
    assert await outcome_of(fallback) == "transferred"
    await daemon.wait_busy([SIDOROV_WP], "sidorov is on the fallback call")
    released = await sim.place_call(RELEASED_CALLER, NUMBER)
    assert await outcome_of(released) == "terminated"
    shadow = await sim.place_call(PETROVA_CLIENT, OTHER_NUMBER)
    assert await outcome_of(shadow) == "terminated"
    await daemon.wait_decisions(4)
    await wait_answered(daemon, 4)


ANSWERED_BY = ("personal", "deputy", "fallback", "other", "nobody")


async def wait_answered(daemon: RunningDaemon, count: int) -> None:
    """Until ``count`` decided calls were answered (or ended unanswered)."""

    def answered() -> bool:
        return sum(daemon.sample("mtt_router_answered_total", by=b) for b in ANSWERED_BY) >= count

    await eventually(answered, f"{count} decided calls answered somewhere")


def hit_rate(daemon: RunningDaemon) -> str:
    """``personal / sum`` of ``mtt_router_answered_total``, as the page writes it."""
    counts = {b: daemon.sample("mtt_router_answered_total", by=b) for b in ANSWERED_BY}
    return f"{counts['personal'] / sum(counts.values()) * 100:.0f} %"


class Page(NamedTuple):
    """The text of every element with an ``id``, and the rows of the tables inside it."""

    text: dict[str, str]
    rows: dict[str, list[list[str]]]


class _Reader(HTMLParser):
    """Reads a page into a :class:`Page` (sections and cards do not nest in one another)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page({}, {})
        self.open: tuple[str, str] | None = None  # (tag, id)
        self.depth = 0
        self.cell: list[str] | None = None
        self.row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        if self.open is None and found is not None:
            self.open, self.depth = (tag, found), 0
            self.page.text[found], self.page.rows[found] = "", []
        elif self.open is not None and tag == self.open[0]:
            self.depth += 1
        if tag == "tr":
            self.row = []
        elif tag == "td":
            self.cell = []
        elif tag == "li" and self.cell is not None:
            self.cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.cell is not None and self.row is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row and self.open is not None:
            self.page.rows[self.open[1]].append(self.row)
            self.row = None
        if self.open is not None and tag == self.open[0]:
            if self.depth == 0:
                self.open = None
            else:
                self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.open is not None:
            self.page.text[self.open[1]] += data
        if self.cell is not None:
            self.cell.append(data)


def read_page(markup: str) -> Page:
    """The sections, cards and tables of a status page (served or as Chromium built it)."""
    reader = _Reader()
    reader.feed(markup)
    reader.close()
    return reader.page


def by_first_cell(rows: list[list[str]]) -> dict[str, list[str]]:
    """Table rows keyed by the first word of their first cell."""
    return {row[0].split()[0]: row for row in rows}


def secrets(daemon: RunningDaemon) -> list[str]:
    """What must never be on the page: MTT's tokens, the client secret, the admin token."""
    tokens = daemon.sim.tokens
    found = [*tokens.access, *tokens.refresh, DOC_CLIENT_SECRET, ADMIN_TOKEN]
    assert len(found) >= 4  # the daemon was issued an access and a refresh token
    return found


async def get_page(
    http: aiohttp.ClientSession, daemon: RunningDaemon
) -> tuple[int, str, dict[str, str]]:
    """``GET /`` as a browser asks for it: ``(status, text, headers)``."""
    async with http.get(daemon.admin_url + "/", headers={"Accept": "text/html"}) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_page_over_http(start_daemon: StartDaemon) -> None:
    """Behind the admin token, the page shows what /status shows, escapes what notifications
    bring (a caller that is a script), and holds no token nor secret."""
    daemon = await start_daemon(
        extra={
            "server": {"admin_token": ADMIN_TOKEN},
            "routing": {"mode": "live", "live_numbers": [NUMBER]},
        }
    )
    await route_calls(daemon)
    script = await daemon.sim.place_call(SCRIPT_CALLER, NUMBER)
    assert await outcome_of(script) == "terminated"
    await daemon.wait_decisions(5)
    await wait_answered(daemon, 5)

    async with aiohttp.ClientSession() as stranger:  # no token, no cookie
        code, text, _ = await get_page(stranger, daemon)
    assert code == 401
    assert 'action="/login"' in text
    assert "Last hour" not in text
    assert IVANOV_CLIENT not in text

    code, text, headers = await get_page(daemon.http, daemon)
    status = await daemon.status()
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' rules
    assert '<meta http-equiv="refresh" content="10">' in text
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    for secret in secrets(daemon):
        assert secret not in text
    page = read_page(text)

    decisions = page.rows["decisions"]
    assert [row[1] for row in decisions] == [
        SCRIPT_CALLER,
        "78124241500",
        RELEASED_CALLER,
        FALLBACK_CALLER,
        IVANOV_CLIENT,
    ]
    assert [row[3] for row in decisions] == [
        "fallback_pbx",
        "shadow",
        "fallback_pbx",
        "transferred",
        "transferred",
    ]
    assert f"caller number is unreadable ('{SCRIPT_CALLER}')" in decisions[0][5]
    # The last hour by outcome: the same counts as /status and the metrics.
    last_hour = status["history"]["last_hour"]
    assert last_hour == {o: int(daemon.decisions(o)) for o in last_hour}
    for outcome, count in last_hour.items():
        assert f"{outcome} {count}" in " ".join(page.text["last-hour"].split())
    assert hit_rate(daemon) in page.text["hit-rate"]
    assert status["answered"]["hit_rate"] == round(
        daemon.sample("mtt_router_answered_total", by="personal") / status["answered"]["total"], 3
    )
    routing = by_first_cell(page.rows["numbers"])
    assert routing[NUMBER][1] == "live"
    assert routing[OTHER_NUMBER][1] == "shadow"
    assert "1 of 2 numbers live" in page.text["routing"]
    assert "v1" in page.text["rules"]
    assert "3 managers, 2 clients" in page.text["rules"]
    assert "authorised" in page.text["auth"]
    assert status["tokens"]["refresh_expires_at"][:10] in page.text["auth"]
    assert status["history"]["masked"] is False


async def run_chromium(tmp_path: Path, *args: str) -> str:
    """Debian's headless Chromium with ``args``; its stdout."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (scripts/test installs it)")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def test_page_in_a_browser(start_daemon: StartDaemon, tmp_path: Path) -> None:
    """Chromium builds the page (no script needed) with each manager's 24 h counts and chart,
    the decisions with their reason chains, the hit rate, who is on a call, callers masked as in
    the logs; the phone-sized screenshot is kept."""
    daemon = await start_daemon(
        extra={
            "routing": {"mode": "live", "live_numbers": [NUMBER]},
            "log": {"mask_numbers": True},
        }
    )
    await route_calls(daemon)
    url = daemon.admin_url + "/"
    dom = await run_chromium(tmp_path, "--dump-dom", url)
    page = read_page(dom)

    assert "<script" not in dom.lower()
    for secret in secrets(daemon):
        assert secret not in dom
    for number in CALLERS:
        assert number not in dom
        assert number[1:] not in dom  # not even without the country code
    decisions = page.rows["decisions"]
    assert [(row[1], row[3]) for row in decisions] == [
        ("+7812***1500", "shadow"),
        ("+7999***3344", "fallback_pbx"),
        ("+7999***1122", "transferred"),
        ("+7921***2761", "transferred"),
    ]
    shadow, released, fallback, client = (row[5].splitlines() for row in decisions)
    assert client[0] == "caller +7921***2761 is client of ivanov"
    assert client[-1] == f"transfer to ivanov {IVANOV_WP}"
    assert fallback[-2:] == ["fallback sidorov is available", f"transfer to sidorov {SIDOROV_WP}"]
    assert released[-2:] == [
        f"fallback sidorov is busy (workplace {SIDOROV_WP} is on a call)",
        "no manager available: terminate (otherwise: pbx), the PBX routes it now",
    ]
    assert shadow[-2:] == [
        f"shadow: would transfer to petrova {PETROVA_WP}",
        "shadow: released to the PBX (terminateCall)",
    ]
    assert [row[2] for row in decisions] == [
        f"petrova {PETROVA_WP}",
        "—",
        f"sidorov {SIDOROV_WP}",
        f"ivanov {IVANOV_WP}",
    ]

    # Per manager, 24 h: decided for them, answered by them (the PBX rang petrova for her
    # client's shadow call), hit rate, and a chart whose hour holds that call.
    managers = by_first_cell(page.rows["managers"])
    assert sorted(managers) == ["ivanov", "petrova", "sidorov"]
    for name, outcome in (
        ("ivanov", "transferred"),
        ("sidorov", "transferred"),
        ("petrova", "shadow"),
    ):
        row = managers[name]
        assert row[3:] == ["1", "1", "100 %"], name
        assert f": 1 call: 1 {outcome}; 1 answered by the manager" in row[2], name
    assert managers["sidorov"][1] == "on a call"
    assert "<svg" in dom
    assert dom.count('class="chart"') == 3

    workplaces = by_first_cell(page.rows["workplaces"])
    assert workplaces[SIDOROV_WP][2:] == ["sidorov", "on a call"]
    assert workplaces[IVANOV_WP][1:3] == ["Иван Иванов", "ivanov (Иван Иванов)"]
    assert hit_rate(daemon) in page.text["hit-rate"]
    assert "Callers are masked" in page.text["decisions"]

    shot = tmp_path / "status-page.png"
    await run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=390,844", url)
    assert png_size(shot) == (390, 844)
    if os.environ.get("MTT_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


class Rec(NamedTuple):
    """A decision record as the engine reports it (the fields the history reads)."""

    call_id: str
    caller: str | None
    callee: str | None
    outcome: str
    manager: str | None = None
    workplace: str | None = None
    reasons: tuple[str, ...] = ()
    error: str | None = None
    latency_ms: float = 1.0


class FakeClock:
    """Wall-clock seconds a test moves by hand."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0  # on an hour boundary

    def __call__(self) -> float:
        return self.t


def test_history_is_bounded_by_count_and_time() -> None:
    """The ring keeps the last 50, the last hour forgets older minutes, hours past 24 go, a
    manager past the per-hour limit counts as others, and answers before their record count."""
    clock = FakeClock()
    history = DecisionHistory(clock)
    for i in range(RECENT + 10):
        history.record(Rec(f"c{i}", "+79219462761", NUMBER, "transferred", "ivanov", IVANOV_WP))
    history.record(Rec("shed", "+79990001122", None, "shed"))
    snap = history.snapshot()
    assert len(snap["recent"]) == RECENT
    assert snap["recent"][0]["call_id"] == f"c{RECENT + 9}"  # newest first, no shed call listed
    assert (snap["last_hour"]["transferred"], snap["last_hour"]["shed"]) == (RECENT + 10, 1)
    history.answered("c0", IVANOV_WP)  # answered by him
    history.answered("c1", PETROVA_WP)  # answered, by someone else
    history.answered("c2", None)  # by nobody
    ivanov = history.snapshot()["managers"]["ivanov"]
    assert (ivanov["decided"], ivanov["answered"], ivanov["hit_rate"]) == (60, 1, 0.017)

    # An answer reported before its record counts once the record comes.
    history.answered("early", SIDOROV_WP)
    history.record(Rec("early", "+79990001122", NUMBER, "transferred", "sidorov", SIDOROV_WP))
    assert history.snapshot()["managers"]["sidorov"]["answered"] == 1

    clock.t += 3600 + 61  # past the hour: the last hour is empty, the 24 h stay
    snap = history.snapshot()
    assert sum(snap["last_hour"].values()) == 0
    assert snap["managers"]["ivanov"]["hours"][-2]["decided"] == 60
    for i in range(MAX_MANAGERS + 5):
        history.record(Rec(f"m{i}", None, NUMBER, "shadow", f"manager{i:04d}", "1"))
    managers = history.snapshot()["managers"]
    assert managers[OTHERS]["decided"] == 5
    for i in range(MAX_EARLY + 100):
        history.answered(f"unknown{i}", IVANOV_WP)
    assert history.bound().size <= history.bound().max

    clock.t += 24 * 3600  # a day later everything else has aged out
    history.record(Rec("late", None, NUMBER, "waited"))
    snap = history.snapshot()
    assert snap["managers"] == {}
    assert [r["call_id"] for r in snap["recent"]] == ["late"]
    assert history.bound().size == 1


def test_history_snapshot_in_the_rules_time_zone() -> None:
    """Times are ISO 8601 in the zone asked for; 24 hour starts, oldest first."""
    history = DecisionHistory(FakeClock())
    history.record(Rec("a", None, NUMBER, "waited"))
    snap = history.snapshot(ZoneInfo("Europe/Moscow"))
    assert snap["recent"][0]["at"] == "2027-01-15T11:00:00+03:00"
    assert (snap["hours"][0], snap["hours"][-1]) == (
        "2027-01-14T12:00:00+03:00",
        "2027-01-15T11:00:00+03:00",
    )
