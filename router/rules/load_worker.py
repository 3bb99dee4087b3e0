"""The daemon's rules reloads run in a child process, so its event loop keeps its pace.

Loading rules is pure Python that holds the GIL: the YAML of 500 managers takes ~0.15 s, a
million ``clients_file`` rows ~1 s. In a thread of the daemon, the event loop would wait for
the GIL at every step of every decision meanwhile (up to the 5 ms switch interval each time).
:func:`load_in_child` runs the loader in ``python -m router.rules.load_worker`` (at a lower CPU
priority) and gets back the :class:`~router.rules.model.Rules` or the
:class:`~router.errors.RulesError`, pickled (the clients as two byte buffers); the calling thread
only waits. :func:`load_here` is the same load in the calling process (the daemon's start, before
it serves; and the fallback when no child can be started).
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from router.errors import RulesError
from router.rules.client_table import ClientsRead, ClientsRequest, Signature, read_clients
from router.rules.loader import load_rules, load_rules_file
from router.rules.model import Rules

WORKER_TIMEOUT_S = 300.0
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


class _Recorder:
    """A clients reader that remembers which file it read, and its signature."""

    def __init__(self) -> None:
        self.request: ClientsRequest | None = None
        self.read: ClientsRead | None = None

    def __call__(self, request: ClientsRequest) -> ClientsRead:
        self.request, self.read = request, read_clients(request)
        return self.read


def load_here(job: Job) -> Loaded:
    """Load ``job`` in this process (blocking)."""
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
    if request is None or read is None or request.text is not None:
        return Loaded(rules, error)
    return Loaded(rules, error, request.path, read.signature)


def load_in_child(job: Job) -> Loaded:
    """:func:`load_here` in ``python -m router.rules.load_worker`` (blocking: call it off the
    event loop); in this process when no child can be started."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, path)))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "router.rules.load_worker"],
            input=dumps(job),
            capture_output=True,
            timeout=WORKER_TIMEOUT_S,
            env=env,
            check=False,
        )
    except OSError:
        return load_here(job)  # no process to be had (a sandbox): block a thread instead
    except subprocess.TimeoutExpired:
        return _failed(job, f"no answer within {WORKER_TIMEOUT_S:g} s")
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return _failed(job, f"exit {done.returncode}: {tail[0]}")
    loaded = pickle.loads(done.stdout)  # our own child's answer
    if not isinstance(loaded, Loaded):
        return _failed(job, "it answered no rules")
    return loaded


def _failed(job: Job, why: str) -> Loaded:
    problem = f"the process loading the rules failed ({why})"
    return Loaded(None, RulesError(job.path or job.source, [(0, problem)]))


def _proxy(items: Mapping[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(dict(items))


def _rules_error(source: str, problems: Any, elsewhere: Any) -> RulesError:
    return RulesError(source, problems, elsewhere)


def dumps(value: object) -> bytes:
    """Pickle ``value``; the rules' read-only mappings and :class:`RulesError` included."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        MappingProxyType: lambda m: (_proxy, (dict(m),)),
        RulesError: lambda e: (_rules_error, (e.source, e.problems, e.elsewhere)),
    }
    pickler.dump(value)
    return buffer.getvalue()


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
    out.write(dumps(load_here(job)))
    out.flush()
    return 0


if __name__ == "__main__":
    # Through the module's own name: what the child pickles must name router.rules.load_worker,
    # not __main__, for the daemon to unpickle it.
    from router.rules import load_worker

    raise SystemExit(load_worker.main())
