"""A big ``clients_file`` is read in a child process, so the daemon's event loop keeps its pace.

Reading a million CSV rows is a second of pure Python: in a thread of the daemon it would hold
the GIL against the event loop the whole time (every decision waiting up to the 5 ms switch
interval at each step). :func:`read_offloaded` runs :func:`~router.rules.client_table.read_clients`
in ``python -m router.rules.clients_worker`` (at a lower CPU priority) and gets back the
:class:`~router.rules.client_table.ClientTable` as two byte buffers; the calling thread only
waits. Files under :data:`OFFLOAD_BYTES` are read in the calling thread: a child costs more.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

from router.rules.client_table import EMPTY, ClientsRead, ClientsRequest, read_clients

OFFLOAD_BYTES = 1 << 20
"""Content this large (~50,000 rows) or larger is read in a child process."""
WORKER_TIMEOUT_S = 300.0
NICE = 10
"""The child's CPU priority below the daemon's: on a busy machine decisions come first."""
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def read_offloaded(request: ClientsRequest) -> ClientsRead:
    """:func:`read_clients`, in a child process when the content is big (blocking: call it off
    the event loop)."""
    if request.text is not None:
        size = len(request.text)
    else:
        try:
            size = os.stat(request.path).st_size
        except OSError:
            size = 0  # read here: the error message is the reader's
    if size < OFFLOAD_BYTES:
        return read_clients(request)
    return read_in_child(request)


def read_in_child(request: ClientsRequest) -> ClientsRead:
    """:func:`read_clients` in ``python -m router.rules.clients_worker``."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, path)))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "router.rules.clients_worker"],
            input=pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL),
            capture_output=True,
            timeout=WORKER_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ClientsRead(EMPTY, [], None, f"the process reading it failed: {exc}")
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return ClientsRead(
            EMPTY, [], None, f"the process reading it failed (exit {done.returncode}: {tail[0]})"
        )
    read = pickle.loads(done.stdout)  # our own child's answer
    if not isinstance(read, ClientsRead):
        return ClientsRead(EMPTY, [], None, "the process reading it gave no table")
    return read


def main() -> int:
    """The child: a pickled :class:`ClientsRequest` on stdin, the :class:`ClientsRead` out."""
    request = pickle.load(sys.stdin.buffer)
    if not isinstance(request, ClientsRequest):
        print("expected a pickled ClientsRequest on stdin", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):  # not permitted: run at the daemon's priority
        os.nice(NICE)
    read = read_clients(request)
    sys.stdout.buffer.write(pickle.dumps(read, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
