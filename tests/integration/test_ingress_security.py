"""The gateway's HAProxy, as Ray runs it for a local Ray (serve/haproxy.py): its admin socket
is its owner's alone, and its stats and metrics listen on loopback only. Tested as a user
without privileges would try: a child process that drops to another uid."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from serve import launcher
from tests.integration.conftest import Gateway, listening_addresses

NOBODY = 65534
CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    sys.exit(13)
s.sendall(b"show info\\n")
print(s.recv(4096).decode(errors="replace"))
"""


def _admin_socket() -> Path:
    folder = launcher.ingress_folder()
    assert folder is not None and stat.S_IMODE(folder.stat().st_mode) == 0o700
    (path,) = folder.glob("*/admin.sock")  # one Ray node, one HAProxy
    return path


def _connect(path: Path, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CONNECT, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
    )


def test_the_admin_socket_refuses_another_user(gateway: Gateway) -> None:
    path = _admin_socket()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
    owner = _connect(path)
    assert owner.returncode == 0 and "Name: HAProxy" in owner.stdout, owner.stderr
    stranger = _connect(path, user=NOBODY)
    assert stranger.returncode == 13, (stranger.stdout, stranger.stderr)


def test_stats_and_haproxy_metrics_listen_on_loopback_only(gateway: Gateway) -> None:
    stats = int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"))
    metrics = int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101"))
    for port in (stats, metrics):
        assert listening_addresses(port) == {"127.0.0.1"}, port
