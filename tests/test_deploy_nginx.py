"""deploy/nginx/mtt-router.conf: a real nginx, in front of a running daemon, lets through exactly
``GET P`` and ``POST P/events`` with the daemon's limits, and tells the daemon the client's
address.

The site file is used as an operator would: copied with its placeholders replaced (a fresh secret
path, the daemon's port, a self-signed certificate made with openssl, paths in a temp dir) and
included in a minimal nginx.conf. scripts/test apt-installs nginx when it is missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from router.config import parse_config
from router.server import MAX_BODY_BYTES
from router.simulator import SimConfig
from tests.fixtures.daemon import StartDaemon, daemon_sim_config
from tests.fixtures.net import free_port
from tests.polling import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx" / "mtt-router.conf"
PLACEHOLDER_PATH = "/mtt/CHANGE-ME-SECRET"
CLIENT = "127.0.0.2"
"""The test's client connects from here (loopback, not nginx's own 127.0.0.1)."""
FORGED = "198.51.100.7"


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("nginx is not installed (scripts/test apt-installs it)")
    return path


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` (which must be there exactly once) replaced: a renamed placeholder
    fails here rather than leaving the copy pointing at the real system."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


@dataclass
class Site:
    """A copy of the site file and the nginx.conf around it, in ``dir``."""

    dir: Path
    conf: Path
    port: int
    path: str
    """The secret path P."""
    cert: Path


def make_site(tmp: Path, *, daemon_port: int, path: str) -> Site:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = free_port()
    text = SITE.read_text(encoding="utf-8")
    for old, new in (
        ("    listen [::]:443 ssl;\n", ""),  # the test host may have no IPv6
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{daemon_port};"),
        ("/etc/letsencrypt/live/router.example.ru/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/router.example.ru/privkey.pem", str(key)),
        ("/var/log/nginx/mtt-router.access.log", str(tmp / "access.log")),
        (f"location = {PLACEHOLDER_PATH} {{", f"location = {path} {{"),
        (f"location = {PLACEHOLDER_PATH}/events {{", f"location = {path}/events {{"),
    ):
        text = replace_once(text, old, new)
    assert PLACEHOLDER_PATH not in re.sub(r"#.*", "", text)
    (tmp / "mtt-router.conf").write_text(text, encoding="utf-8")
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + "daemon off;\nworker_processes 1;\n"
        + f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'error.log'} info;\n"
        + "events { worker_connections 64; }\n"
        + "http {\n"
        + temp_paths
        + f"    access_log {tmp / 'other-access.log'};\n"
        + f"    include {tmp / 'mtt-router.conf'};\n"
        + "}\n",
        encoding="utf-8",
    )
    return Site(tmp, conf, port, path, cert)


def nginx_test(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-c", str(site.conf), "-p", str(site.dir), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nginx_accepts_the_site(tmp_path: Path) -> None:
    (tmp_path / "nginx").mkdir()
    done = nginx_test(make_site(tmp_path / "nginx", daemon_port=free_port(), path="/mtt/x"))
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr
    assert "[emerg]" not in done.stderr


def directive(name: str) -> str:
    """The one value of ``name`` in the site file's server block."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", SITE.read_text(encoding="utf-8"), re.M)
    assert len(values) == 1, (name, values)
    return str(values[0])


def test_the_limits_are_the_daemons() -> None:
    """Body size and every timeout are the daemon's own: nginx refuses what the daemon would
    (so the daemon's limits are never the ones that act) and never cuts what it would accept."""
    mtt = {"client_id": "x", "client_secret": "y", "redirect_uri": "https://h/mtt"}
    read_timeout_s = parse_config({"mtt": mtt}, env={}).server.read_timeout_s
    assert directive("client_max_body_size") == f"{MAX_BODY_BYTES // (1024 * 1024)}m"
    for name in (
        "client_header_timeout",
        "client_body_timeout",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "send_timeout",
    ):
        assert directive(name) == f"{read_timeout_s}s", name
    assert directive("server_tokens") == "off"


@pytest.fixture
def sim_config() -> SimConfig:
    return daemon_sim_config()


def start_nginx(site: Site) -> subprocess.Popen[bytes]:
    with (site.dir / "stderr.log").open("wb") as log:
        proc = subprocess.Popen(
            [nginx_binary(), "-c", str(site.conf), "-p", str(site.dir), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def listening() -> bool:
        assert proc.poll() is None, (site.dir / "stderr.log").read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", site.port)) == 0

    eventually_sync(listening, "nginx listens")
    return proc


async def test_nginx_in_front_of_the_daemon(start_daemon: StartDaemon, tmp_path: Path) -> None:
    path = "/mtt/" + secrets.token_hex(16)
    daemon = await start_daemon(
        redirect_path=path, extra={"server": {"trusted_proxies": ["127.0.0.1"]}}
    )
    port = int(daemon.public_url.rsplit(":", 1)[1])
    (tmp_path / "nginx").mkdir()
    site = make_site(tmp_path / "nginx", daemon_port=port, path=path)
    proc = start_nginx(site)
    base = f"https://127.0.0.1:{site.port}"
    tls = ssl.create_default_context(cafile=str(site.cert))
    connector = aiohttp.TCPConnector(ssl=tls, local_addr=(CLIENT, 0))
    try:
        async with aiohttp.ClientSession(connector=connector) as http:

            async def fetch(
                method: str, url_path: str, **kwargs: object
            ) -> tuple[int, dict[str, str], str]:
                async with http.request(method, base + url_path, **kwargs) as resp:  # type: ignore[arg-type]
                    return resp.status, dict(resp.headers), await resp.text()

            # GET P (MTT's reachability check): the daemon's page, through TLS, with HSTS and
            # no nginx version.
            code, headers, body = await fetch("GET", path)
            assert code == 200, body
            assert "mtt-router" in body
            assert headers["Server"] == "nginx"
            assert headers["Strict-Transport-Security"].startswith("max-age=")

            # POST P/events reaches the daemon, which sees the client's address, not nginx's
            # and not what the client wrote in its own X-Forwarded-For.
            examples = json.loads((ROOT / "tests/data/doc_notifications.json").read_text())
            payload = next(e for e in examples["examples"] if e["name"] == "trying_outgoing")
            trying = {"event": "callNotifications", "state": "trying"}
            before = daemon.sample("mtt_router_notifications_total", **trying)
            code, _, body = await fetch(
                "POST",
                path + "/events",
                json=payload["payload"],
                headers={"X-Forwarded-For": FORGED},
            )
            assert code == 200, body
            assert daemon.sample("mtt_router_notifications_total", **trying) == before + 1
            sources = [s["address"] for s in (await daemon.status())["sources"]]
            assert sources == [CLIENT]

            # Any other path or method: nginx's own answer, the daemon never asked.
            for other in ("/", "/mtt", path + "/", path + "x", path + "/events/", "/metrics"):
                code, _, body = await fetch("GET", other)
                assert code == 404, other
                assert "<center>nginx</center>" in body, other
            code, _, body = await fetch("GET", path + "/events")
            assert code == 403
            code, _, body = await fetch("POST", path, data=b"{}")
            assert code == 403

            # A body over 1 MiB is refused by nginx; one of exactly 1 MiB is the daemon's.
            rejected = daemon.sample("mtt_router_rejected_total", reason="too_large")
            code, _, body = await fetch(
                "POST", path + "/events", data=io.BytesIO(b"x" * (MAX_BODY_BYTES + 1))
            )
            assert code == 413
            assert "<center>nginx</center>" in body
            code, _, body = await fetch(
                "POST", path + "/events", data=io.BytesIO(b" " * MAX_BODY_BYTES)
            )
            assert code not in (413, 502, 504), body
            assert "nginx" not in body
            assert daemon.sample("mtt_router_rejected_total", reason="too_large") == rejected
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)
    # The access log has every request and never the secret path.
    access = (site.dir / "access.log").read_text(encoding="utf-8")
    assert len(access.splitlines()) >= 10
    assert path.rsplit("/", 1)[1] not in access
