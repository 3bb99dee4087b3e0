"""Fuzzing ``POST P/events`` of a running daemon over real HTTP with Hypothesis.

Every example starts from one of MTT's document examples (``tests/data/doc_notifications.json``)
and mutates it: fields dropped, added or given another type (str, int, float, list, object,
null, bool), strings past the 256 and 1024 character limits and of about 100 KB, deep nesting in
any field (up to 10 000 lists or objects: past orjson's 1024 levels), odd unicode (escaped lone
surrogates, RTL marks, NUL, BOM, emoji), then wraps it: UTF-8 JSON, other encodings (UTF-16/32,
latin-1, cp1251, a BOM), truncated or junk-framed JSON, random bytes, a form, gzip or deflate
bodies and bodies that do not match their ``Content-Encoding``, chunked or not, under any of a
dozen content types.

The property: no answer is a 5xx (only 200 "ok", 400 with a reason, 413); a body the parser
accepts is answered 200 and one it refuses 400, whatever the headers say; ``/healthz`` keeps
answering; no error is logged. After the examples, the document's examples are still accepted and
a real call at the simulator is transferred to the caller's manager.

One daemon serves the whole property: Hypothesis runs in a worker thread and each example's POST
runs on the test's event loop. ``MTT_FUZZ_EXAMPLES`` sets the number of examples (2000 by default,
what CI runs, derandomized: the same inputs every run, so it cannot flake). A longer run on demand,
drawing fresh inputs with ``MTT_FUZZ_RANDOM=1``::

    MTT_FUZZ_EXAMPLES=50000 MTT_FUZZ_RANDOM=1 .venv/bin/python -m pytest -s tests/test_fuzz.py

The number of examples posted and the time taken are printed at the end, even without ``-s``.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from router.errors import EventShapeError
from router.events import parse_event
from router.server import MAX_BODY_BYTES
from router.simulator import SimConfig
from tests.fixtures.daemon import (
    IVANOV_CLIENT,
    IVANOV_WP,
    NUMBER,
    WAIT_S,
    RunningDaemon,
    StartDaemon,
    daemon_sim_config,
    outcome_of,
    routed_to,
)
from tests.polling import eventually

EXAMPLES = int(os.environ.get("MTT_FUZZ_EXAMPLES", "2000"))
RANDOM = os.environ.get("MTT_FUZZ_RANDOM", "") not in ("", "0")
HEALTH_EVERY = 25
"""``/healthz`` is asked after every this many examples (and at the end)."""

DOC = json.loads(
    (Path(__file__).parent / "data" / "doc_notifications.json").read_text(encoding="utf-8")
)
SEEDS: dict[str, Any] = {e["name"]: e["payload"] for e in DOC["examples"]}

T = TypeVar("T")
Key = str | int
Where = tuple[Key, ...]


@pytest.fixture
def sim_config() -> SimConfig:
    """The simulator for daemon tests (1 s parking window)."""
    return daemon_sim_config()


# -- notifications: mutated trees --------------------------------------------------------------


@dataclass(frozen=True)
class Deep:
    """``inner`` nested in ``depth`` lists (or objects), written as text: ``json.dumps`` would
    hit Python's recursion limit first."""

    depth: int
    inner: Any
    objects: bool


def places(value: Any, where: Where = ()) -> list[Where]:
    """The path of every node of a JSON tree, the root (``()``) first."""
    found = [where]
    if isinstance(value, dict):
        for key, child in value.items():
            found += places(child, (*where, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += places(child, (*where, index))
    return found


def node(tree: Any, where: Where) -> Any:
    for key in where:
        tree = tree[key]
    return tree


def replaced(tree: Any, where: Where, value: Any) -> Any:
    """``tree`` (not changed) with the node at ``where`` replaced by ``value``."""
    if not where:
        return value
    copy: Any = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[where[0]] = replaced(copy[where[0]], where[1:], value)
    return copy


def dropped(tree: Any, where: Where) -> Any:
    """``tree`` (not changed) without the node at ``where`` (the root cannot be dropped)."""
    if len(where) == 1:
        copy: Any = dict(tree) if isinstance(tree, dict) else list(tree)
        del copy[where[0]]
        return copy
    return replaced(tree, where[:1], dropped(tree[where[0]], where[1:]))


def to_text(value: Any, ascii_only: bool) -> str:
    """JSON text of a tree that may hold :class:`Deep` nodes."""
    if isinstance(value, Deep):
        opening, closing = ('{"d":', "}") if value.objects else ("[", "]")
        inner = to_text(value.inner, ascii_only)
        return opening * value.depth + inner + closing * value.depth
    if isinstance(value, dict):
        items = (
            json.dumps(str(k), ensure_ascii=ascii_only) + ":" + to_text(v, ascii_only)
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_text(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


ODD_CHARS = [
    "\ud800",  # lone surrogates: escaped in JSON (ASCII) or raw bytes (invalid UTF-8)
    "\udfff",
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\x00",
    "\ufeff",
    "\uffff",
    "\u0301",  # combining accent
    "😀",
    "я",
    "\n",
    '"',
    "\\",
    "+",
    "7",
]
odd_text = st.text(st.one_of(st.sampled_from(ODD_CHARS), st.characters()), max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**80),  # past 64 bits: orjson reads a float
    st.floats(),  # NaN and Infinity included: not JSON
    odd_text,
)
odd_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(odd_text, scalars, max_size=4),
)
HUGE = [256, 257, 1024, 1025, 100_000]
"""Characters: at and past the id (256) and name (1024) limits, and about 100 KB."""
DEPTHS = [2, 100, 10_000]
"""Levels of nesting added to a field."""
DOCUMENT_DEPTHS = st.integers(950, 1030)
"""Levels of nesting of the whole document, around the limits: orjson reads up to 1024 levels,
and Python's recursion limit (1000) is below that."""
KINDS = ["str", "int", "float", "list", "dict", "null", "bool"]
MUTATIONS = ["swap", "drop", "replace", "huge", "deep", "deep", "text", "add"]


@st.composite
def swapped(draw: st.DrawFn, value: Any) -> Any:
    """``value`` as another JSON type."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "str":
        return value if isinstance(value, str) else to_text(value, True)
    if kind == "int":
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
            return int(value)
        return draw(st.integers())
    if kind == "float":
        return draw(st.floats())
    if kind == "list":
        return [value]
    if kind == "dict":
        return {"value": value}
    if kind == "null":
        return None
    return draw(st.booleans())


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """One document example with one to four mutations."""
    tree: Any = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        where = draw(st.sampled_from(places(tree)))
        current = node(tree, where)
        how = draw(st.sampled_from(MUTATIONS))
        if how == "drop" and where:
            tree = dropped(tree, where)
        elif how == "swap":
            tree = replaced(tree, where, draw(swapped(current)))
        elif how == "huge":
            char = draw(st.sampled_from(["7", "x", "я", "😀", "\x00", "\u202e"]))
            tree = replaced(tree, where, char * draw(st.sampled_from(HUGE)))
        elif how == "deep":
            depth = draw(st.sampled_from(DEPTHS))
            tree = replaced(tree, where, Deep(depth, current, draw(st.booleans())))
        elif how == "text":
            tree = replaced(tree, where, draw(odd_text))
        elif how == "add" and isinstance(current, dict):
            tree = replaced(tree, where, {**current, draw(odd_text): draw(odd_values)})
        elif how == "add" and isinstance(current, list):
            tree = replaced(tree, where, [*current, draw(odd_values)])
        else:
            tree = replaced(tree, where, draw(odd_values))
    return tree


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """One document example with one node nested so that the document's depth is around the
    limits (nothing else changed): the input most likely to reach code that recurses."""
    tree: Any = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    where = draw(st.sampled_from(places(tree)))
    current = node(tree, where)
    depth = max(draw(DOCUMENT_DEPTHS) - len(where) - 1, 1)
    objects = draw(st.booleans())
    if objects and isinstance(current, list):
        # A list's entry nested in objects (the list itself stays a list).
        return replaced(tree, where, [*current, Deep(depth - 1, None, True)])
    return replaced(tree, where, Deep(depth, current, objects))


# -- notifications: what goes on the wire ------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One POST: the body as sent, its headers, and how it was made (for the tallies)."""

    kind: str
    body: bytes
    headers: dict[str, str]
    chunked: bool
    identity: bool
    """The body is what the daemon parses (no content coding): its answer is predictable."""

    def __repr__(self) -> str:
        # Short: Hypothesis shows a failing example, and a body can be 100 KB.
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return (
            f"Post({self.kind!r}, {len(self.body)} bytes, {self.headers}, chunked={self.chunked},"
            f" body={body!r})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=utf-16",
    "application/json; charset=no-such-charset",
    "text/plain",
    "text/html; charset=latin-1",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zz",
    "application/octet-stream",
    "*/*",
    "json",
    "",
]
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1", "cp1251"]
BODY_KINDS = [
    *["json"] * 8,
    "encoded",
    "truncated",
    "framed",
    "bytes",
    "form",
    "gzip",
    "deflate",
    "miscoded",
]


@st.composite
def posts(draw: st.DrawFn) -> Post:
    """A mutated notification in one of the wrappings of :data:`BODY_KINDS`, or (one in three)
    a :func:`nested` one as plain JSON."""
    if draw(st.sampled_from(["mutated", "mutated", "nested"])) == "nested":
        body = to_text(draw(nested()), ascii_only=True).encode()
        return Post("nested", body, {"Content-Type": "application/json"}, draw(st.booleans()), True)
    tree = draw(mutated())
    text = to_text(tree, ascii_only=draw(st.booleans()))
    body = text.encode("utf-8", "surrogatepass")  # a raw lone surrogate: invalid UTF-8
    kind = draw(st.sampled_from(BODY_KINDS))
    headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES))}
    identity = True
    if kind == "encoded":
        body = text.encode(draw(st.sampled_from(ENCODINGS)), "replace")
    elif kind == "truncated":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif kind == "framed":
        junk = st.sampled_from([b"", b"\x00", b" \r\n", b"\xef\xbb\xbf", b"\xff", b"//", b"{}"])
        body = draw(junk) + body + draw(junk)
    elif kind == "bytes":
        body = draw(st.binary(max_size=512))
    elif kind == "form":
        body = b"event=callNotifications&result=" + body[:200]
    elif kind in ("gzip", "deflate"):
        body = gzip.compress(body) if kind == "gzip" else zlib.compress(body)
        headers["Content-Encoding"] = kind
        identity = False
    elif kind == "miscoded":
        coding = draw(st.sampled_from(["gzip", "deflate", "br", "zstd", "x-unknown", "identity"]))
        headers["Content-Encoding"] = coding
        identity = coding == "identity"
    return Post(kind, body, headers, draw(st.booleans()), identity)


def expected_status(body: bytes) -> int:
    """The daemon's answer to ``body`` sent as it is: 413 over the size limit, else 200 for what
    its parser makes a notification of, 400 for the rest."""
    if len(body) > MAX_BODY_BYTES:
        return 413
    try:
        parse_event(orjson.loads(body))
    except (orjson.JSONDecodeError, EventShapeError):
        return 400
    return 200


async def send(daemon: RunningDaemon, post: Post) -> tuple[int, str]:
    """POST it to the daemon's events URL: ``(status, text)``."""
    data: bytes | io.BytesIO | AsyncIterator[bytes] = post.body
    if post.chunked:

        async def pieces() -> AsyncIterator[bytes]:
            half = len(post.body) // 2
            yield post.body[:half]
            yield post.body[half:]

        data = pieces()
    elif len(post.body) > 64 * 1024:
        data = io.BytesIO(post.body)  # aiohttp warns that raw bytes that big block the loop
    async with daemon.http.post(daemon.events_url, data=data, headers=post.headers) as resp:
        return resp.status, (await resp.read()).decode("utf-8", "replace")


async def healthz(daemon: RunningDaemon) -> int:
    async with daemon.http.get(daemon.admin_url + "/healthz") as resp:
        return resp.status


# -- the property ------------------------------------------------------------------------------

REASONS = ("malformed JSON", "not a notification", "unreadable body")


def check_answer(post: Post, status: int, text: str) -> None:
    """Never a 5xx; 200 "ok" exactly for what the parser accepts; 400 with a reason."""
    shown = repr(post)
    assert status < 500, f"{status} {text!r} for {shown}"
    assert status in (200, 400, 413), f"{status} {text!r} for {shown}"
    if status == 200:
        assert text == "ok", shown
    elif status == 400 and post.identity:
        # (With a content coding aiohttp may refuse the body before the daemon sees it.)
        assert text.startswith(REASONS), f"{text!r} for {shown}"
    else:
        assert len(post.body) > MAX_BODY_BYTES or not post.identity, shown
    if post.identity:
        assert status == expected_status(post.body), f"{status} {text!r} for {shown}"


@pytest.mark.slow
@pytest.mark.timeout(60 + EXAMPLES // 10)
async def test_mutated_notifications_never_get_a_5xx(
    start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thousands of mutated notifications: never a 5xx, the daemon stays up and still routes."""
    daemon = await start_daemon()
    loop = asyncio.get_running_loop()
    recursion_limit = sys.getrecursionlimit()
    for name, seed in SEEDS.items():
        assert await daemon.post_event(seed) == (200, "ok"), name
    tally: Counter[tuple[str, int]] = Counter()

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(WAIT_S)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(posts())
    def every_answer_is_well_formed(post: Post) -> None:
        # Hypothesis raises the process's recursion limit while it runs an example (by 2000
        # frames): that would hide, in the daemon's thread too, a handler that recurses as deep
        # as the input nests. The daemon answers under the limit it has outside Hypothesis.
        raised = sys.getrecursionlimit()
        sys.setrecursionlimit(recursion_limit)
        try:
            status, text = on_loop(send(daemon, post))
        finally:
            sys.setrecursionlimit(raised)
        tally[post.kind, status] += 1
        check_answer(post, status, text)
        if tally.total() % HEALTH_EVERY == 0:
            assert on_loop(healthz(daemon)) == 200, "/healthz after the examples so far"

    started = time.perf_counter()
    with capture_logs() as logs:
        await asyncio.to_thread(every_answer_is_well_formed)
        await eventually(
            lambda: _settled(daemon), "every decision the examples started is over", timeout_s=30
        )
    elapsed = time.perf_counter() - started

    assert await healthz(daemon) == 200
    assert not daemon.task.done()
    assert [e for e in logs if e.get("log_level") in ("error", "critical")] == []
    # The document's examples are still accepted, and a real call is routed as ever.
    for name, seed in SEEDS.items():
        assert await daemon.post_event(seed) == (200, "ok"), name
    call = await daemon.sim.place_call(IVANOV_CLIENT, NUMBER)
    assert await outcome_of(call) == "transferred"
    assert routed_to(call) == IVANOV_WP

    statuses = Counter[int]()
    for (_, status), count in tally.items():
        statuses[status] += count
    with capsys.disabled():
        print(
            f"\nfuzz: {tally.total()} mutated notifications posted in {elapsed:.1f} s"
            f" (MTT_FUZZ_EXAMPLES={EXAMPLES}, {'random' if RANDOM else 'derandomized'});"
            f" answers {dict(sorted(statuses.items()))};"
            f" by kind {dict(sorted(Counter(k for (k, _) in tally.elements()).items()))}"
        )


async def _settled(daemon: RunningDaemon) -> bool:
    return bool((await daemon.status())["engine"]["inflight"] == 0)
