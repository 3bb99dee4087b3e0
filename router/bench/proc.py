"""The daemon under test as the kernel sees it: CPU seconds, resident memory and open file
descriptors from ``/proc``.

Linux only (the bench reads ``/proc/<pid>/stat``, ``/proc/<pid>/status`` and ``/proc/<pid>/fd``);
elsewhere the numbers are reported as ``None``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far, or ``None`` if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * _TICK_S


def rss_bytes(pid: int) -> int | None:
    """Resident set size (``VmRSS``), or ``None`` if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def open_fds(pid: int) -> int | None:
    """Open file descriptors (entries of ``/proc/<pid>/fd``), or ``None`` if unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the usual small race is acceptable in a bench)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tcp_rows() -> list[list[str]]:
    rows: list[list[str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        rows += [cols for line in lines if len(cols := line.split()) > 9]
    return rows


def _port(address: str) -> int:
    # local_address / rem_address are HEXIP:HEXPORT.
    return int(address.rsplit(":", 1)[1], 16)


_LISTEN = "0A"
_HOLDING = ("01", "08")
"""ESTABLISHED and CLOSE_WAIT: the states in which a connection still has its descriptor."""


def _listening_inodes(port: int) -> set[str]:
    return {c[9] for c in _tcp_rows() if c[3] == _LISTEN and _port(c[1]) == port}


def tcp_connections(pid: int) -> tuple[int, int] | None:
    """``(inbound, outbound)`` TCP connections holding a descriptor of ``pid``: inbound ones are
    on a port it listens on (each is also an asyncio task in an aiohttp server), outbound ones
    the rest (its client pools). ``None`` if unreadable."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        links = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return None
    mine = [c for c in _tcp_rows() if f"socket:[{c[9]}]" in links]
    listening = {_port(c[1]) for c in mine if c[3] == _LISTEN}
    held = [c for c in mine if c[3] in _HOLDING]
    inbound = sum(1 for c in held if _port(c[1]) in listening)
    return inbound, len(held) - inbound


def pid_listening_on(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine, if it can be seen."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None
