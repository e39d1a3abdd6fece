"""serve/ingress/haproxy.py against Ray 2.60's own generated HAProxy configuration, checked by the
real
HAProxy binary Ray ships (no Ray cluster)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from serve.ingress import haproxy
from tests.conftest import free_port

SAMPLE = Path(__file__).parent / "data" / "ray-2.60-haproxy.cfg"


def _ray_config(folder: Path) -> str:
    (folder / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\n\r\n")
    return SAMPLE.read_text().replace("@RUN@", str(folder))


def test_the_hardened_configuration_is_valid_and_closes_each_hole(tmp_path: Path) -> None:
    config = haproxy.harden(_ray_config(tmp_path), tmp_path, internal_host="10.1.2.3")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run(
        [haproxy.real_binary(), "-c", "-f", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"stats socket {tmp_path}/admin.sock mode 600 level admin" in config
    assert "mode 666" not in config
    assert "listen stats\n  bind 127.0.0.1:8404" in config
    assert "frontend prometheus\n    bind 10.1.2.3:9101" in config
    assert "defaults\n    timeout http-request 10s\n    option srvtcpka\n" in config
    # every router replica's connections end when its host is lost (keepalive, user timeout)
    servers = re.findall(r"(?m)^    server .*$", config)
    assert servers and all(line.endswith(" tcp-ut 3s") for line in servers)
    assert "\n    maxconn 4096\n" in config  # Ray's, from the sample: fds to spare here
    assert "500.http" not in config
    unavailable = (tmp_path / "modelgate-503.http").read_bytes()
    assert unavailable.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in unavailable
    body = b'{"error": "unavailable: no router replica could answer; retry later"}\n'
    assert unavailable.endswith(b"\r\n\r\n" + body)
    for frontend in ("http_frontend", "grpc_frontend"):
        section = config.split(f"frontend {frontend}\n", 1)[1].split("\nfrontend ", 1)[0]
        for header in haproxy.STRIPPED_HEADERS:
            assert f"http-request del-header {header}\n" in section, (frontend, header)
    http = config.split("frontend http_frontend\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "\n    http-response wait-for-body time 1000 at-least 14336\n" in http
    assert "http-response deny deny_status 503 if !METH_HEAD" in http


def test_hardening_twice_changes_nothing_and_a_changed_template_fails_loudly(
    tmp_path: Path,
) -> None:
    once = haproxy.harden(_ray_config(tmp_path), tmp_path)
    assert haproxy.harden(once, tmp_path) == once
    without_socket = _ray_config(tmp_path).replace("mode 666 level admin", "level admin")
    with pytest.raises(haproxy.TemplateChanged, match="stats socket"):
        haproxy.harden(without_socket, tmp_path)


def test_the_launcher_rewrites_the_file_in_place_then_runs_haproxy(tmp_path: Path) -> None:
    """What Ray runs as its HAProxy binary: `-c` (check) here, so it exits at once."""
    folder = haproxy.private_folder()
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        env = haproxy.ray_env(folder)
        launcher = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
        assert launcher.parent == folder and os.access(launcher, os.X_OK)
        assert all(Path(env[k]).is_relative_to(folder) for k in env if k in haproxy.PATH_SETTINGS)
        config = tmp_path / "haproxy.cfg"
        config.write_text(_ray_config(tmp_path))
        run = subprocess.run([str(launcher), "-c", "-f", str(config)], capture_output=True)
        assert run.returncode == 0, run.stderr
        assert config.read_text().startswith(haproxy.MARK)
    finally:
        haproxy.remove(folder)
    assert not folder.exists()


def test_a_folder_too_long_for_haproxys_sockets_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(haproxy.FolderError, match="too long a path for HAProxy's sockets"):
        haproxy.ray_env(tmp_path / ("x" * 40))


def test_maxconn_fits_the_open_files_haproxy_may_have(tmp_path: Path) -> None:
    """HAProxy asks for 2.5 descriptors a connection, and will not start without them."""
    config = haproxy.harden(_ray_config(tmp_path), tmp_path, max_files=5000)
    assert "\n    maxconn 1600\n" in config


def test_the_real_binary_is_never_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = haproxy.private_folder()
    try:
        launcher = haproxy.install_launcher(folder)
        monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(launcher))
        assert Path(haproxy.real_binary()).name == "haproxy"  # what the launcher execs
        monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/opt/haproxy/bin/haproxy")
        assert haproxy.real_binary() == "/opt/haproxy/bin/haproxy"  # the operator's own
    finally:
        haproxy.remove(folder)


class _Backend(threading.Thread):
    """A stand-in router: /truncated dies mid-answer, /silent never answers (its connection
    held open); anything else echoes the request head."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            head = conn.recv(65536)
            if b"/silent" in head:
                self.held.append(conn)
                continue
            with conn:
                if b"/truncated" in head:
                    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"outp')
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(head) + head
                    )


def test_the_hardened_front_strips_opt_outs_and_turns_a_truncated_answer_into_a_503(
    tmp_path: Path,
) -> None:
    """Ray's configuration, hardened, run by the real HAProxy in front of a stand-in router.
    HAProxy's own 504 (a router's connection timing out: in production only a lost host's, as
    no server timeout is set; here a test-only one of 1 s) is the same retryable 503."""
    backend = _Backend()
    backend.start()
    config = haproxy.harden(_ray_config(tmp_path), tmp_path)
    config = config.replace("\ndefaults\n", "\ndefaults\n    timeout server 1s\n", 1)
    config = re.sub(r"127\.0\.0\.1:(30\d\d\d|8500)\b", f"127.0.0.1:{backend.port}", config)
    front = free_port()
    config = config.replace("bind 127.0.0.1:51611", f"bind 127.0.0.1:{front}")
    for port in ("59199", "8404", "9101"):
        config = config.replace(f":{port}", f":{free_port()}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    proc = subprocess.Popen(
        [haproxy.real_binary(), "-db", "-f", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{front}"
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", front)):
                break
            time.sleep(0.05)
        headers = {"x-request-timeout-seconds": "0", "x-request-disconnect-disabled": "?1"}
        echoed = requests.get(f"{url}/v2/echo", headers=headers, timeout=10)
        assert echoed.status_code == 200 and b"GET /v2/echo" in echoed.content
        assert b"x-request-timeout-seconds" not in echoed.content.lower()
        assert b"x-request-disconnect-disabled" not in echoed.content.lower()
        cut = requests.get(f"{url}/v2/truncated", timeout=10)
        assert cut.status_code == 503 and cut.headers["retry-after"] == "1"
        assert cut.json() == {"error": "unavailable: no router replica could answer; retry later"}
        head = requests.head(f"{url}/v2/echo", timeout=10)  # a HEAD answer has no body
        assert head.status_code == 200
        silent = requests.get(f"{url}/v2/silent", timeout=10)
        assert silent.status_code == 503 and silent.headers["retry-after"] == "1"
        assert silent.json() == cut.json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.sock.close()
        for conn in backend.held:
            conn.close()


def test_ingress_env_makes_a_new_folder_private_and_never_takes_a_shared_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from serve.cli import main

    base = haproxy.private_folder()  # a short path: HAProxy's sockets go below it
    try:
        new = base / "n"
        assert main(["ingress-env", str(new)]) == 0
        assert stat.S_IMODE(new.stat().st_mode) == 0o700
        printed = capsys.readouterr().out
        assert f"export RAY_SERVE_HAPROXY_BINARY_PATH={new}/haproxy-launcher" in printed
        assert "export RAY_SERVE_GRPC_MAX_MESSAGE_SIZE=67108864" in printed
        shared = base / "s"
        shared.mkdir()
        shared.chmod(0o755)
        assert main(["ingress-env", str(shared)]) == 2  # refused, and left as it was
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
        assert "a folder of their own" in capsys.readouterr().err
    finally:
        haproxy.remove(base)
