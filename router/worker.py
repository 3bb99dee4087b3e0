"""One of ``server.workers`` daemon processes, as the worker itself sees it.

The supervisor (:mod:`router.supervisor`) starts ``mtt-router run --config PATH --worker I
--supervisor-pid PID`` for I in 1..N. Such a worker is a whole daemon, with three differences:

- its public listener joins the others on ``server.listen`` with ``SO_REUSEPORT`` (the kernel
  spreads new connections across the workers' sockets);
- its admin listener is ``server.admin_listen``'s port + I (the supervisor answers on the port
  itself: /healthz and /readyz for the whole set, /workers); Prometheus scrapes each worker;
- ``log.capture`` gets ``.wI`` before its suffix (``capture.w1.jsonl``): each worker rotates its
  own file, none appends to another's.

It dies with the supervisor (``PR_SET_PDEATHSIG``: SIGTERM, a graceful stop), so a supervisor
killed with SIGKILL leaves no worker holding the ports. The running config stays the file's as
read: a SIGHUP's comparison with the re-read file sees no difference the worker made itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from router.config import HostPort

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Worker:
    """Worker ``index`` (1-based) of a supervisor."""

    index: int

    def admin_address(self, admin_listen: HostPort) -> HostPort:
        """Where this worker's admin listener binds: the configured port + the index."""
        return worker_admin(admin_listen, self.index)

    def capture_path(self, capture: str) -> str:
        """This worker's ``log.capture`` file (empty stays empty: no capture)."""
        if not capture:
            return capture
        path = Path(capture)
        return str(path.with_name(f"{path.stem}.w{self.index}{path.suffix}"))

    @property
    def log_fields(self) -> dict[str, int]:
        """What every log line of the worker carries (the workers share one stderr)."""
        return {"worker": self.index, "pid": os.getpid()}


def worker_admin(admin_listen: HostPort, index: int) -> HostPort:
    """The admin address of worker ``index`` of a supervisor listening on ``admin_listen``."""
    return HostPort(admin_listen.host, admin_listen.port + index)


def die_with(supervisor_pid: int) -> bool:
    """Ask the kernel for SIGTERM when the supervisor dies; False when it is already gone.

    Where the request is not available (not Linux), a worker outlives a killed supervisor."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # Checked after the request: a supervisor that died before it made us someone else's child.
    return os.getppid() == supervisor_pid
