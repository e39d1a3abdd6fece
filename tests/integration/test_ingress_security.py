"""The gateway's HAProxy, as Ray runs it for a local Ray (serve/ingress/haproxy.py): its admin
socket
is its owner's alone, and its stats and metrics listen on loopback only. Tested as a user
without privileges would try: a child process that drops to another uid."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from serve.ray import launcher
from tests.integration.conftest import Gateway, listening_addresses

NOBODY = 65534


def _admin_socket() -> Path:
    folder = launcher.ingress_folder()
    assert folder is not None and stat.S_IMODE(folder.stat().st_mode) == 0o700
    (path,) = folder.glob("*/admin.sock")  # one Ray node, one HAProxy
    return path


def _connect_as(path: Path, uid: int) -> int:
    """0 if a child process running as `uid` (no groups) can connect to `path`, 13 if it is
    refused permission, 2 for anything else. Forked, not exec'd: the child needs no access
    to an interpreter."""
    pid = os.fork()
    if pid == 0:  # the child: syscalls only, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_the_admin_socket_refuses_another_user(gateway: Gateway) -> None:
    path = _admin_socket()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
    with socket.socket(socket.AF_UNIX) as owner:  # its owner (Ray) still reaches it
        owner.settimeout(10)
        owner.connect(str(path))
        owner.sendall(b"show info\n")
        assert b"Name: HAProxy" in owner.recv(65536)
    assert _connect_as(path, NOBODY) == 13


def test_stats_and_haproxy_metrics_listen_on_loopback_only(gateway: Gateway) -> None:
    stats = int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"))
    metrics = int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101"))
    for port in (stats, metrics):
        assert listening_addresses(port) == {"127.0.0.1"}, port
