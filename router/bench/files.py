"""The files a benchmarked daemon runs on: rules, config and a pre-seeded tokens file.

Managers are always available (no schedule), one per generated workplace; callers are spread
over them round-robin, so every call has a personal manager and, with enough workplaces, a free
one. The config points both MTT URLs at the bench's simulator and keeps everything on loopback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from router.mtt.tokens import TokenResponse, TokenSet
from router.simulator.config import DOC_CLIENT_ID, DOC_CLIENT_SECRET

CALLER_BASE = 79_210_000_000
"""Callers are ``+7 921 ...`` numbers counted up from here (E.164 digits)."""
CLIENTS_CSV = "clients.csv"
"""The rules' ``clients_file`` (beside them) when the callers are listed in a CSV."""


def callers(count: int) -> list[str]:
    """``count`` distinct caller numbers, as MTT sends them (E.164 digits, no ``+``)."""
    return [str(CALLER_BASE + i) for i in range(count)]


def manager_id(index: int) -> str:
    """The id of the bench's manager number ``index``."""
    return f"m{index:05d}"


def rules_yaml(
    workplaces: list[str] | tuple[str, ...], caller_numbers: list[str], clients_file: str = ""
) -> str:
    """Rules format 1: one always-available manager per workplace, callers round-robin; with
    ``clients_file``, format 2 with the clients in that CSV (:func:`write_clients_csv`)."""
    version = 2 if clients_file else 1
    lines = [f"version: {version}", 'timezone: "Europe/Moscow"', "managers:"]
    for i, workplace in enumerate(workplaces):
        lines += [f"  {manager_id(i)}:", f'    workplace: "{workplace}"']
    if clients_file:
        lines.append(f'clients_file: "{clients_file}"')
    else:
        lines.append("clients:")
        for i, number in enumerate(caller_numbers):
            lines.append(f'  "{number}": {manager_id(i % len(workplaces))}')
    lines += ["fallback:", "  managers: []", "  otherwise: pbx", ""]
    return "\n".join(lines)


def write_clients_csv(path: Path, rows: int, managers: int) -> None:
    """``rows`` clients as a CRM would export them (``number,manager`` and a header), the
    callers of :func:`callers` first, managers round-robin as in :func:`rules_yaml`; written
    beside ``path`` and renamed onto it, so a watcher sees the whole file at once."""
    tmp = path.with_name(f".{path.name}.tmp")
    chunk = 100_000
    with tmp.open("w", encoding="utf-8", newline="") as out:
        out.write("number,manager\n")
        for start in range(0, rows, chunk):
            out.write(
                "".join(
                    f"{CALLER_BASE + i},{manager_id(i % managers)}\n"
                    for i in range(start, min(rows, start + chunk))
                )
            )
    os.replace(tmp, path)


@dataclass(frozen=True)
class DaemonFiles:
    """Where the files are and the addresses the daemon will listen on."""

    config: Path
    rules: Path
    tokens: Path
    log: Path
    capture: Path | None
    """``log.capture`` of the daemon (``None``: off)."""
    public: str
    """``host:port`` of the public listener."""
    admin: str
    """``host:port`` of the admin listener."""
    callback_path: str = "/mtt"
    storage: str = "memory"
    """The daemon's ``storage``: ``memory`` or a Redis URL."""
    storage_prefix: str = "mtt-router:"

    @property
    def events_url(self) -> str:
        """Where the simulator POSTs notifications."""
        return f"http://{self.public}{self.callback_path}/events"

    @property
    def admin_url(self) -> str:
        """The admin listener's base URL."""
        return f"http://{self.admin}"


def config_yaml(
    files: DaemonFiles, sim_url: str, log_level: str, max_inflight: int | None = None
) -> str:
    """The daemon's config: simulator as MTT, ``files.storage``, JSON logs at ``log_level``,
    ``log.capture`` into ``files.capture`` when set, ``server.max_inflight`` when given."""
    capture = [] if files.capture is None else [f'  capture: "{files.capture}"']
    inflight = [] if max_inflight is None else [f"  max_inflight: {max_inflight}"]
    return "\n".join(
        [
            "mtt:",
            f'  client_id: "{DOC_CLIENT_ID}"',
            f'  client_secret: "{DOC_CLIENT_SECRET}"',
            f'  redirect_uri: "http://{files.public}{files.callback_path}"',
            f'  oauth_url: "{sim_url}"',
            f'  api_url: "{sim_url}"',
            "server:",
            f'  listen: "{files.public}"',
            f'  admin_listen: "{files.admin}"',
            *inflight,
            f"storage: {json.dumps(files.storage)}",
            f"storage_prefix: {json.dumps(files.storage_prefix)}",
            f'tokens_file: "{files.tokens}"',
            "rules:",
            '  source: "file"',
            f'  path: "{files.rules}"',
            "routing:",
            "  decision_budget_ms: 3500",
            "  park: []",
            "log:",
            '  format: "json"',
            f'  level: "{log_level}"',
            *capture,
            "",
        ]
    )


def write_daemon_files(
    directory: Path,
    *,
    sim_url: str,
    public: str,
    admin: str,
    workplaces: tuple[str, ...],
    caller_numbers: list[str],
    tokens: TokenResponse | None,
    log_level: str,
    capture: bool = False,
    max_inflight: int | None = None,
    clients_file: bool = False,
    storage: str = "memory",
    storage_prefix: str = "mtt-router:",
) -> DaemonFiles:
    """Write rules, config and (when given) a tokens file into ``directory``; ``capture`` turns
    ``log.capture`` on (``capture.jsonl`` there), ``max_inflight`` sets ``server.max_inflight``,
    ``clients_file`` puts the callers in ``clients.csv`` (rules format 2); ``storage`` (and its
    prefix) is the daemon's ``storage`` (a Redis one holds the tokens: see ``redis_probe``)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = DaemonFiles(
        config=directory / "config.yaml",
        rules=directory / "rules.yaml",
        tokens=directory / "tokens.json",
        log=directory / "daemon.log",
        capture=directory / "capture.jsonl" if capture else None,
        public=public,
        admin=admin,
        storage=storage,
        storage_prefix=storage_prefix,
    )
    csv = CLIENTS_CSV if clients_file else ""
    files.rules.write_text(rules_yaml(workplaces, caller_numbers, csv), encoding="utf-8")
    if clients_file:
        write_clients_csv(directory / CLIENTS_CSV, len(caller_numbers), len(workplaces))
    files.config.write_text(config_yaml(files, sim_url, log_level, max_inflight), encoding="utf-8")
    if tokens is not None:
        data = json.dumps(TokenSet.from_response(tokens, version=1).to_json()).encode()
        fd = os.open(files.tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return files
