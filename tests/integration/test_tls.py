"""TLS: HTTPS and gRPC over TLS through the front `modelgate serve --tls-cert --tls-key` starts,
with a self-signed certificate made for the test; and mutual TLS with a client CA."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest
import requests

from serve.ingress import haproxy
from serve.ingress.tls import TlsConfig, TlsError, TlsFront
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.integration.conftest import Gateway

ROW = [5.1, 3.5, 1.4, 0.2]


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout {} -out {} -subj /CN={}"
    subprocess.run(
        [*command.format(key, cert, name).split(), "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def _ports(gateway: Gateway) -> tuple[int, int]:
    return int(gateway.base.rsplit(":", 1)[1]), int(gateway.grpc.rsplit(":", 1)[1])


def _grpc_infer(channel: grpc.Channel) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def test_https_and_grpc_over_tls(gateway: Gateway, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "gateway")
    config = TlsConfig(cert, key, free_port(), free_port(), host="127.0.0.1")
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    with TlsFront(config, *_ports(gateway)) as front:
        https, grpcs = front.urls()
        answer = requests.post(f"{https}/v2/models/iris/infer", json=body, verify=cert, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_name"] == "iris"
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust it
            requests.get(f"{https}/v2/health/live", timeout=10)
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on that port
            requests.get(f"http://127.0.0.1:{config.https_port}/v2/health/live", timeout=10)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(grpcs, credentials) as channel:
            response = _grpc_infer(channel)
        assert response.model_name == "iris" and response.outputs[0].name == "label"
        assert response.raw_output_contents or response.outputs[0].contents.int64_contents


def test_mutual_tls_refuses_a_client_without_a_certificate(
    gateway: Gateway, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path, "gateway")
    client_cert, client_key = _self_signed(tmp_path, "client")
    config = TlsConfig(cert, key, free_port(), free_port(), "127.0.0.1", client_ca=client_cert)
    with TlsFront(config, *_ports(gateway)) as front:
        https, grpcs = front.urls()
        live = requests.get(
            f"{https}/v2/health/live", verify=cert, cert=(client_cert, client_key), timeout=10
        )
        assert live.json() == {"live": True}
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{https}/v2/health/live", verify=cert, timeout=10)
        credentials = grpc.ssl_channel_credentials(
            cert.read_bytes(), client_key.read_bytes(), client_cert.read_bytes()
        )
        with grpc.secure_channel(grpcs, credentials) as channel:
            assert _grpc_infer(channel).model_name == "iris"


def test_a_missing_certificate_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"certificate .* is not a file"):
        TlsFront(TlsConfig(tmp_path / "nope.crt", tmp_path / "nope.key"), 8000, 9000)


def test_the_tls_front_drops_a_slow_header_client_at_its_head_timeout(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same head timeout as the gateway's own HAProxy (set short here, as a setting), while
    a normal request is served meanwhile."""
    monkeypatch.setattr(haproxy, "HEAD_TIMEOUT_S", 1)
    cert, key = _self_signed(tmp_path, "gateway")
    config = TlsConfig(cert, key, free_port(), free_port(), host="127.0.0.1")
    context = ssl.create_default_context(cafile=str(cert))
    with TlsFront(config, *_ports(gateway)) as front:
        https, _ = front.urls()
        raw = socket.create_connection(("127.0.0.1", config.https_port), timeout=30)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as slow:
            slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n")  # never ends
            served = requests.get(f"{https}/v2/health/live", verify=cert, timeout=30)
            assert served.status_code == 200
            answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ")
