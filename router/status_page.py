"""The status page (``GET /`` on the admin listener): :func:`router.overview.gather` as HTML.

Plain HTML and CSS: no script (the page's Content-Security-Policy allows none), system fonts, one
column on a phone, and it reloads itself every :data:`REFRESH_S` seconds. Every value is escaped
(:func:`html.escape`): callers, reasons and source addresses come from notifications. It shows
what ``/status`` shows, which never holds a token or the client secret; callers are masked there
when ``log.mask_numbers`` is on. The charts are inline SVG, drawn here.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

REFRESH_S = 10
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
}
"""No script, no frame, nothing loaded from elsewhere: only the page's own inline style."""

COLOURS = {
    "transferred": "#2e7d32",
    "shadow": "#1565c0",
    "fallback_pbx": "#6d4c41",
    "waited": "#9e9e9e",
    "missed_window": "#ef6c00",
    "error": "#c62828",
    "duplicate": "#bdbdbd",
    "shed": "#8e24aa",
}
BAR_W, CHART_H, AXIS_H = 6, 36, 7

_CSS = """
:root{color-scheme:light dark;--fg:#1b1b1b;--muted:#666;--bg:#fff;--card:#f4f5f7;--line:#ddd}
@media (prefers-color-scheme:dark){:root{--fg:#e8e8e8;--muted:#aaa;--bg:#121212;--card:#1e1f22;
--line:#333}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1100px;padding:12px;font:15px/1.4 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta,.muted{color:var(--muted);font-size:.9em}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(165px,1fr));gap:8px}
.card{background:var(--card);border-radius:8px;padding:8px 10px;overflow-wrap:anywhere}
.card h2{margin:0 0 .3em;font-size:.78em;text-transform:uppercase;color:var(--muted)}
.card p{margin:.3em 0 0}small{font-size:.8em}
.big{font-size:1.5em;font-weight:600;line-height:1.1}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-size:.85em;
white-space:nowrap;background:#757575}
.ok{background:#2e7d32}.bad{background:#c62828}.warn{background:#ef6c00}.idle{background:#9e9e9e}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:5px 6px;border-bottom:1px solid var(--line)}
th{font-size:.85em;color:var(--muted);font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
ol.reasons{margin:0;padding-left:1.2em}code{font-size:.92em}
.counts{display:flex;flex-wrap:wrap;gap:6px;list-style:none;padding:0;margin:0}
.counts li{background:var(--card);border-radius:6px;padding:4px 8px}
.legend span{margin-right:10px;white-space:nowrap}.sw{display:inline-block;width:10px;height:10px;
margin-right:3px;vertical-align:-1px}
svg.chart{display:block;max-width:100%;height:auto}
@media (max-width:640px){body{padding:8px;font-size:14px}
table.stack thead{display:none}table.stack tr{display:block;border-bottom:2px solid var(--line);
padding:4px 0}table.stack td{display:block;border:0;padding:2px 4px}
table.stack td[data-label]::before{content:attr(data-label) ": ";color:var(--muted);
font-size:.85em}table.stack td.n{display:inline-block;text-align:left;margin-right:10px}}
"""


def e(value: Any) -> str:
    """``value`` as escaped text (``None``: a dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _tz(data: Mapping[str, Any]) -> tzinfo:
    name = data.get("rules", {}).get("timezone")
    try:
        return ZoneInfo(name) if isinstance(name, str) else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _when(iso: str | None, tz: tzinfo, *, date: bool = True) -> str:
    """An ISO time as ``2027-01-12 14:05`` (or ``14:05:09``) in ``tz``, escaped."""
    if not iso:
        return "—"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(tz)
    except ValueError:
        return e(iso)
    return e(moment.strftime("%Y-%m-%d %H:%M" if date else "%H:%M:%S"))


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{e(text)}</span>'


def _outcome(name: str) -> str:
    colour = COLOURS.get(name, "#757575")
    return f'<span class="badge" style="background:{colour}">{e(name)}</span>'


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.0f} %"


def _table(
    headers: Iterable[str], rows: Iterable[Iterable[str]], *, stack: bool = False, num: int = 0
) -> str:
    """Rows of already escaped cells; the last ``num`` columns are numbers."""
    heads = list(headers)
    first_num = len(heads) - num
    cls = ' class="stack"' if stack else ""

    def cell(i: int, value: str) -> str:
        label = f' data-label="{e(heads[i])}"' if stack and heads[i] else ""
        return f"<td{' class=n' if i >= first_num else ''}{label}>{value}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    head = "".join(
        f"<th{' class=n' if i >= first_num else ''}>{e(h)}</th>" for i, h in enumerate(heads)
    )
    table = f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def chart(hours: list[dict[str, Any]], starts: list[str], tz: tzinfo, peak: int) -> str:
    """Calls per hour as stacked bars by outcome, a dark tick at the calls answered by the
    manager; one bar per hour, oldest left."""
    scale = (CHART_H - 2) / max(peak, 1)
    width, height = len(hours) * BAR_W, CHART_H + AXIS_H
    first = _when(starts[0], tz, date=False)[:5] if starts else ""
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width * 1.5:.0f}" '
        f'height="{height * 1.5:.0f}" role="img" aria-label="calls per hour, last '
        f'{len(hours)} hours">',
        f'<line x1="0" y1="{CHART_H - 0.5}" x2="{width}" y2="{CHART_H - 0.5}" '
        'stroke="#999" stroke-width="1"/>',
        f'<text x="0" y="{height - 1}" font-size="6" fill="#888">{first}</text>',
        f'<text x="{width}" y="{height - 1}" font-size="6" fill="#888" text-anchor="end">now'
        "</text>",
    ]
    for i, (hour, start) in enumerate(zip(hours, starts, strict=False)):
        x, y = i * BAR_W, float(CHART_H - 1)
        outcomes: Mapping[str, int] = hour["outcomes"]
        said = ", ".join(f"{n} {o}" for o, n in outcomes.items())
        calls = f"{hour['decided']} call{'' if hour['decided'] == 1 else 's'}"
        title = f"{_when(start, tz)}: {calls}{': ' + e(said) if said else ''}"
        title += f"; {hour['answered']} answered by the manager"
        parts.append(f"<g><title>{title}</title>")
        parts.append(f'<rect x="{x}" y="0" width="{BAR_W}" height="{CHART_H}" fill-opacity="0"/>')
        for name, count in outcomes.items():
            bar = count * scale
            y -= bar
            colour = COLOURS.get(name, "#757575")
            parts.append(
                f'<rect x="{x + 0.5}" y="{y:.1f}" width="{BAR_W - 1}" height="{bar:.1f}" '
                f'fill="{colour}"/>'
            )
        if hour["answered"]:
            tick = CHART_H - 1 - hour["answered"] * scale
            parts.append(
                f'<rect x="{x}" y="{tick - 0.75:.1f}" width="{BAR_W}" height="1.5" fill="#111"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _cards(data: Mapping[str, Any], tz: tzinfo) -> str:
    tokens, rules, rollout = data["tokens"], data["rules"], data["rollout"]
    if tokens.get("authorized"):
        auth = _badge("authorised", "ok") + (
            f"<p>until {_when(tokens.get('refresh_expires_at'), tz)}<br><small class=muted>"
            f"the refresh token's end, renewed while running; access token until "
            f"{_when(tokens.get('access_expires_at'), tz)}</small></p>"
        )
    else:
        auth = _badge("needs login", "bad") + "<p>open <a href=/oauth/start>/oauth/start</a></p>"
    numbers: Mapping[str, str] = rollout["numbers"]
    live = sum(1 for state in numbers.values() if state == "live")
    mode = rollout["mode"]
    shown = f"{live} of {len(numbers)} numbers live" if numbers else "numbers not known yet"
    mode_html = _badge(mode, "ok" if mode == "live" else "warn") + f"<p>{e(shown)}</p>"
    if rules.get("loaded"):
        counts = ", ".join(f"{n} {k}" for k, n in rules["counts"].items())
        rules_html = (
            f'<span class="big">v{e(rules["version"])}</span><p>{e(counts)}<br><small '
            f"class=muted>loaded {_when(rules['loaded_at'], tz)} from {e(rules['source'])}"
            "</small></p>"
        )
    else:
        rules_html = _badge("no rules", "bad")
    if rules.get("last_error"):
        rules_html += f"<p>last error: <code>{e(rules['last_error'])}</code></p>"
    answered = data["answered"]
    by = " · ".join(f"{k} {n}" for k, n in answered["by"].items())
    hit = (
        f'<span class="big">{_percent(answered["hit_rate"])}</span><p>the caller\'s own manager '
        f"answered {answered['by']['personal']} of {answered['total']} decided calls<br>"
        f"<small class=muted>{e(by)}</small></p>"
    )
    cards = (
        ("auth", "Authorisation", auth),
        ("routing", "Routing", mode_html),
        ("rules", "Rules", rules_html),
        ("hit-rate", "Personal-manager hit rate", hit),
    )
    inner = "".join(
        f'<div class="card" id="{key}"><h2>{title}</h2>{body}</div>' for key, title, body in cards
    )
    return f'<section class="cards">{inner}</section>'


def _numbers(data: Mapping[str, Any]) -> str:
    rollout, directory = data["rollout"], data["directory"]
    parked = set(directory["parked_numbers"])
    rows = [
        (
            f"<code>{e(number)}</code>",
            _badge(state, "ok" if state == "live" else "warn"),
            "yes" if number in parked else "—",
        )
        for number, state in rollout["numbers"].items()
    ]
    if not rows:
        return "<p class=muted>MTT's numbers are not known yet.</p>"
    return _table(("number", "routing", "parked by routing.park"), rows)


def _managers(data: Mapping[str, Any], tz: tzinfo) -> str:
    history = data["history"] or {"managers": {}, "hours": []}
    per: Mapping[str, Any] = history["managers"]
    managers = {m["id"]: m for m in data["rules"].get("managers", [])}
    busy = set(data["engine"]["busy"])
    peak = max((h["decided"] for m in per.values() for h in m["hours"]), default=1)
    empty = [{"decided": 0, "answered": 0, "outcomes": {}}] * len(history["hours"])
    rows = []
    for name in sorted(managers.keys() | per.keys()):
        rule = managers.get(name, {})
        stats = per.get(name, {"decided": 0, "answered": 0, "hit_rate": None, "hours": empty})
        label = e(name) + (
            f" <span class=muted>{e(rule['name'])}</span>" if rule.get("name") else ""
        )
        wp = rule.get("workplace")
        rows.append(
            (
                label,
                _badge("on a call", "bad") if wp in busy else _badge("free", "idle"),
                chart(stats["hours"], history["hours"], tz, peak),
                str(stats["decided"]),
                str(stats["answered"]),
                _percent(stats["hit_rate"]),
            )
        )
    legend = "".join(
        f'<span><i class="sw" style="background:{c}"></i>{e(o)}</span>' for o, c in COLOURS.items()
    )
    legend += (
        '<span><i class="sw" style="background:#111;height:2px"></i>answered by the manager</span>'
    )
    heads = ("manager", "now", "calls per hour, 24 h", "decided", "answered", "hit rate")
    return _table(heads, rows, stack=True, num=3) + f'<p class="legend muted">{legend}</p>'


def _workplaces(data: Mapping[str, Any]) -> str:
    names = {w["workplace"]: w["name"] for w in data["directory"]["workplaces"] or []}
    owners: dict[str, list[str]] = {}
    for m in data["rules"].get("managers", []):
        owners.setdefault(m["workplace"], []).append(
            m["id"] + (f" ({m['name']})" if m["name"] else "")
        )
    busy = set(data["engine"]["busy"])
    rows = [
        (
            f"<code>{e(wp)}</code>",
            e(names.get(wp)) if wp in names else "<span class=muted>not listed by MTT</span>",
            e(", ".join(owners.get(wp, []))) or "<span class=muted>no manager</span>",
            _badge("on a call", "bad") if wp in busy else _badge("free", "idle"),
        )
        for wp in sorted(names.keys() | owners.keys())
    ]
    return _table(("workplace", "name in MTT", "managers", "now"), rows, stack=True)


def _decisions(data: Mapping[str, Any], tz: tzinfo) -> str:
    history = data["history"]
    if not history or not history["recent"]:
        return "<p class=muted>No decision yet.</p>"
    rows = []
    for d in history["recent"]:
        reasons = "".join(f"<li>{e(r)}</li>" for r in d["reasons"])
        if d.get("error"):
            reasons += f"<li>error: {e(d['error'])}</li>"
        manager = e(d["manager"]) + (
            f" <span class=muted>{e(d['workplace'])}</span>" if d["workplace"] else ""
        )
        rows.append(
            (
                _when(d["at"], tz, date=False),
                e(d["caller"]),
                manager,
                _outcome(d["outcome"]),
                f"{d['latency_ms']:.1f} ms",
                f'<ol class="reasons">{reasons}</ol>' if reasons else "—",
            )
        )
    heads = ("time", "caller", "manager", "outcome", "latency", "reasons")
    return _table(heads, rows, stack=True)


def _sources(data: Mapping[str, Any], tz: tzinfo) -> str:
    rows = [
        (
            f"<code>{e(s['address'])}</code>",
            _badge("allowed", "ok") if s["allowed"] else _badge("refused", "bad"),
            _when(datetime.fromtimestamp(s["last_seen"], UTC).isoformat(), tz),
            str(s["posts"]),
            str(s["refused"]),
        )
        for s in data["sources"]
    ]
    if not rows:
        return "<p class=muted>No notification in the last 24 h.</p>"
    return _table(("address", "allow_from", "last seen", "posts", "refused"), rows, num=2)


def render(data: Mapping[str, Any], now: float | None = None) -> str:
    """The whole page for one :func:`router.overview.gather` result."""
    tz = _tz(data)
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz)
    history = data["history"]
    last_hour = history["last_hour"] if history else {}
    counts = "".join(f"<li>{_outcome(o)} <b>{n}</b></li>" for o, n in last_hour.items())
    masked = " Callers are masked (log.mask_numbers)." if history and history.get("masked") else ""
    engine = data["engine"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}"><meta name="referrer" content="no-referrer">
<title>mtt-router status</title><style>{_CSS}</style></head>
<body><header><h1>mtt-router</h1>
<p class="meta">{e(moment.strftime("%Y-%m-%d %H:%M:%S %Z"))} · refreshes every {REFRESH_S} s ·
<a href="/status">JSON</a> · <a href="/metrics">metrics</a></p></header>
{_cards(data, tz)}
<section id="last-hour"><h2>Last hour</h2><ul class="counts">{counts}</ul></section>
<section id="managers"><h2>Managers, last 24 h</h2>{_managers(data, tz)}</section>
<section id="workplaces"><h2>Workplaces</h2>{_workplaces(data)}</section>
<section id="numbers"><h2>External numbers</h2>{_numbers(data)}</section>
<section id="decisions"><h2>Last {len(history["recent"]) if history else 0} decisions</h2>
<p class="muted">Newest first.{masked}</p>{_decisions(data, tz)}</section>
<section id="sources"><h2>Sources of notifications, last 24 h</h2>{_sources(data, tz)}</section>
<footer><p class="meta">started {_when(data["started_at"], tz)} · storage {e(data["storage"])} ·
{e(engine["inflight"])} tasks in flight · times in {e(str(tz))}</p></footer>
</body></html>
"""
