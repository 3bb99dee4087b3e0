"""The daemon's rules reloads run in a child process, so its event loop keeps its pace.

Loading rules is pure Python that holds the GIL: the YAML of 500 managers takes ~0.15 s, a
million ``clients_file`` rows ~1 s. In a thread of the daemon, the event loop would wait for
the GIL at every step of every decision meanwhile (up to the 5 ms switch interval each time).
:func:`load_in_child` runs the loader in ``python -m router.rules.load_worker`` (at a lower CPU
priority) and gets back the :class:`~router.rules.model.Rules` or the
:class:`~router.errors.RulesError`, pickled (the clients as two byte buffers); the calling thread
only waits. :func:`load_here` is the same load in the calling process (the daemon's start, before
it serves; small rules; and the fallback when no child can be started); :func:`load_off_loop`
picks one of the two by size.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from router.errors import RulesError
from router.rules.client_table import (
    ClientsRead,
    ClientsRequest,
    ClientTable,
    Signature,
    read_clients,
)
from router.rules.loader import load_rules, load_rules_file
from router.rules.model import Rules

OFFLOAD_BYTES = 8 << 10
"""Rules (with their ``clients_file``) this large are loaded in a child: ~50 ms of YAML."""
_CLIENTS_FILE = re.compile(r"""^clients_file:[ \t]*["']?([^"'#\r\n]+)""", re.MULTILINE)
WORKER_TIMEOUT_S = 300.0
READ_SLICE = 1 << 20
_HEAD = struct.Struct("<QQ")
"""The answer's frame: the pickle's size and the number of out-of-band buffers; then each
buffer's size (8 bytes), the pickle, the buffers."""
NICE = 10
"""The child's CPU priority below the daemon's: on a busy machine decisions come first."""
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class Job(NamedTuple):
    """Rules to load: the file at ``path``, or ``text`` (with its ``clients_file`` content)."""

    source: str
    path: str | None = None
    text: str | None = None
    clients_text: str | None = None


class Loaded(NamedTuple):
    """What a load gave: the rules or the error, and the ``clients_file`` it read from disk."""

    rules: Rules | None
    error: RulesError | None
    clients_path: Path | None = None
    clients_signature: Signature | None = None
    """Of the ``clients_file`` as it was opened (the watcher compares it)."""
    cpu_s: float | None = None
    """CPU seconds the load took (a child's whole life: its start included)."""


class _Recorder:
    """A clients reader that remembers which file it read, and its signature."""

    def __init__(self) -> None:
        self.request: ClientsRequest | None = None
        self.read: ClientsRead | None = None

    def __call__(self, request: ClientsRequest) -> ClientsRead:
        self.request, self.read = request, read_clients(request)
        return self.read


def load_off_loop(job: Job) -> Loaded:
    """The daemon's reload (blocking: call it in a thread): in a child process when the rules
    and their ``clients_file`` are :data:`OFFLOAD_BYTES` or more, else here (a child costs
    ~0.2 s to start; small rules take milliseconds)."""
    return load_in_child(job) if _size(job) >= OFFLOAD_BYTES else load_here(job)


def _size(job: Job) -> int:
    if job.path is None:
        return len(job.text or "") + len(job.clients_text or "")
    try:
        rules = Path(job.path)
        text = rules.read_text(encoding="utf-8-sig", errors="replace")
        found = _CLIENTS_FILE.search(text)
        clients = (rules.parent / found.group(1).strip()).stat().st_size if found else 0
    except OSError:
        return 0  # the load says what is wrong, here
    return len(text) + clients


def load_here(job: Job) -> Loaded:
    """Load ``job`` in this process (blocking)."""
    cpu = time.thread_time()
    recorder = _Recorder()
    rules, error = None, None
    try:
        if job.path is not None:
            rules = load_rules_file(job.path, clients_reader=recorder)
        else:
            rules = load_rules(
                job.text or "", job.source, clients_text=job.clients_text, clients_reader=recorder
            )
    except RulesError as exc:
        error = exc
    request, read = recorder.request, recorder.read
    cpu_s = time.thread_time() - cpu
    if request is None or read is None or request.text is not None:
        return Loaded(rules, error, cpu_s=cpu_s)
    return Loaded(rules, error, request.path, read.signature, cpu_s)


def load_in_child(job: Job) -> Loaded:
    """:func:`load_here` in ``python -m router.rules.load_worker`` (blocking: call it off the
    event loop); in this process when no child can be started.

    The answer is read straight into its buffers (the client table's arrays arrive out of band,
    each read a system call that lets the event loop run): the only work of this thread under
    the GIL is unpickling the rules, which no longer copies the clients.
    """
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, path)))}
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "router.rules.load_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
            )
        except OSError:
            return load_here(job)  # no process to be had (a sandbox): block a thread instead
        timer = threading.Timer(WORKER_TIMEOUT_S, child.kill)  # then every read ends
        timer.start()
        loaded: Loaded | None = None
        with child:  # closes the pipes and waits for it
            try:
                loaded = _answer(child, job)
            finally:
                timer.cancel()
                if loaded is None:
                    child.kill()  # no answer: do not wait for one (a no-op once it exited)
        code = child.returncode
        if loaded is not None and code == 0:
            return loaded
        errors.seek(0)
        tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        why = f"exit {code}: {tail[0]}" if code else "it answered no rules"
        return _failed(job, why)


def _answer(child: subprocess.Popen[bytes], job: Job) -> Loaded | None:
    """Send ``job``, read the framed answer (``None``: the child gave none)."""
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        with child.stdin:
            child.stdin.write(dumps(job))
    except OSError:
        return None  # it died before reading: its exit code and stderr say why
    out = child.stdout
    head = _read(out, _HEAD.size)
    if head is None:
        return None
    size, count = _HEAD.unpack(head)
    sizes = _read(out, 8 * count)
    data = _read(out, size)
    if sizes is None or data is None:
        return None
    buffers = []
    for (length,) in struct.iter_unpack("<Q", sizes):
        buffer = _read(out, length)
        if buffer is None:
            return None
        buffers.append(buffer)
    try:
        loaded = pickle.loads(data, buffers=buffers)  # our own child's answer
    except Exception:  # a garbled answer is no answer: the caller says so
        return None
    return loaded if isinstance(loaded, Loaded) else None


def _read(stream: IO[bytes], size: int) -> bytearray | None:
    """Exactly ``size`` bytes, read in slices (the GIL is free during each read)."""
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        got = stream.readinto(view[done : done + READ_SLICE])  # type: ignore[attr-defined]
        if not got:
            return None
        done += got
    return buffer


def _failed(job: Job, why: str) -> Loaded:
    problem = f"the process loading the rules failed ({why})"
    return Loaded(None, RulesError(job.path or job.source, [(0, problem)]))


def _proxy(items: Mapping[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(dict(items))


def _rules_error(source: str, problems: Any, elsewhere: Any) -> RulesError:
    return RulesError(source, problems, elsewhere)


def _table(
    numbers: bytearray, managers: bytearray, wide: bool, names: tuple[str, ...], extra: Any
) -> ClientTable:
    indexes = memoryview(managers).cast("I" if wide else "H")
    return ClientTable(memoryview(numbers).cast("q"), indexes, names, extra)


def _reduce_table(table: ClientTable) -> tuple[Any, ...]:
    numbers, managers, names, extra = table.parts()
    views = (pickle.PickleBuffer(numbers), pickle.PickleBuffer(managers))  # type: ignore[arg-type]
    return (_table, (*views, len(names) > 0xFFFF, names, extra))


def dumps(value: object, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """Pickle ``value``; the rules' read-only mappings and :class:`RulesError` included. With
    ``buffers``, a client table's arrays go there (out of band) instead of into the pickle."""
    out = io.BytesIO()
    pickler = pickle.Pickler(
        out, protocol=5, buffer_callback=None if buffers is None else buffers.append
    )
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        MappingProxyType: lambda m: (_proxy, (dict(m),)),
        RulesError: lambda e: (_rules_error, (e.source, e.problems, e.elsewhere)),
    }
    if buffers is not None:
        pickler.dispatch_table[ClientTable] = _reduce_table
    pickler.dump(value)
    return out.getvalue()


def main() -> int:
    """The child: a pickled :class:`Job` on stdin, the pickled :class:`Loaded` on stdout."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever prints (a log line) must not land in the answer
    job = pickle.load(sys.stdin.buffer)
    if not isinstance(job, Job):
        print("expected a pickled Job on stdin", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):  # not permitted: run at the daemon's priority
        os.nice(NICE)
    buffers: list[pickle.PickleBuffer] = []
    loaded = load_here(job)
    data = dumps(loaded._replace(cpu_s=time.process_time()), buffers)
    views = [buffer.raw() for buffer in buffers]
    out.write(_HEAD.pack(len(data), len(views)))
    out.write(b"".join(struct.pack("<Q", view.nbytes) for view in views))
    out.write(data)
    for view in views:
        out.write(view)
    out.flush()
    return 0


if __name__ == "__main__":
    # Through the module's own name: what the child pickles must name router.rules.load_worker,
    # not __main__, for the daemon to unpickle it.
    from router.rules import load_worker

    raise SystemExit(load_worker.main())
