"""The direct transport (serve/transport/direct.py): a dedicated version's batches go over it,
fixed-size or autoscaled, and answer exactly as the original model; string tensors go through
Ray Serve's handle; a replica's endpoint is published in Ray's KV while it runs."""

from __future__ import annotations

import hmac
import socket

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from serve.ray.internals import KVDirectory
from serve.transport import direct
from serve.transport.direct import kv_prefix
from tests.integration.bodies import X_BC, assert_churn_answers_as_the_original, infer_body
from tests.integration.conftest import APP, Gateway, listening_addresses, metric_value


def _batches(gateway: Gateway, version: str, transport: str, model: str = "breast_cancer") -> float:
    return metric_value(
        gateway,
        "modelgate_transport_batches_total",
        model=model,
        version=version,
        transport=transport,
    )


def test_fixed_size_versions_go_direct_and_answer_as_the_original(gateway: Gateway) -> None:
    listed = KVDirectory().listing(kv_prefix(APP, "breast_cancer-v1"))
    assert len(listed) == 1  # one replica, one endpoint
    before = {t: _batches(gateway, "1", t) for t in ("direct", "handle")}
    original = gateway.originals["breast_cancer:1"]
    x = load_breast_cancer(return_X_y=True)[0][:40].astype(np.float32)
    for i in range(0, 40, 4):
        response = requests.post(
            f"{gateway.base}/v2/models/breast_cancer/versions/1/infer",
            json=infer_body(x[i : i + 4]),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        label = next(o for o in response.json()["outputs"] if o["name"] == "label")
        assert label["data"] == original.predict(x[i : i + 4]).tolist()
    assert _batches(gateway, "1", "direct") - before["direct"] == 10
    assert _batches(gateway, "1", "handle") == before["handle"]


def test_autoscaled_versions_go_direct_and_strings_through_the_handle(gateway: Gateway) -> None:
    before = {t: _batches(gateway, "2", t) for t in ("direct", "handle")}
    response = requests.post(
        f"{gateway.base}/v2/models/breast_cancer/versions/2/infer",
        json=infer_body(X_BC[:2]),
        timeout=30,
    )
    assert response.status_code == 200
    assert _batches(gateway, "2", "direct") == before["direct"] + 1
    assert _batches(gateway, "2", "handle") == before["handle"]
    strings = _batches(gateway, "1", "handle", model="churn")
    assert_churn_answers_as_the_original(gateway)
    assert _batches(gateway, "1", "handle", model="churn") == strings + 1


def _endpoint() -> tuple[str, int]:
    (address,) = KVDirectory().listing(kv_prefix(APP, "breast_cancer-v1")).values()
    host, port = address.rsplit(":", 1)
    return host, int(port)


def test_a_stranger_gets_nothing_computed_and_is_counted(gateway: Gateway) -> None:
    """A well-formed frame without the handshake, then a replayed handshake: the replica
    computes neither (its row count stays), counts both, and keeps serving the router."""
    host, port = _endpoint()
    assert listening_addresses(port) == {host} != {"0.0.0.0"}  # the node's address only
    rows = _rows(gateway)
    refused = _refused(gateway)
    frame = b"".join(direct.encode({"input": np.asarray(X_BC[:8], np.float32)}))
    with socket.create_connection((host, port), timeout=10) as stranger:
        assert _read_exactly(stranger, len(direct.HELLO) + direct.NONCE).startswith(direct.HELLO)
        stranger.sendall(frame)
        assert _closed_without_answer(stranger)
    secret = KVDirectory().shared_secret(APP)  # the application's, made by its replicas
    proof = _handshake(host, port, secret)  # a router's, recorded
    with socket.create_connection((host, port), timeout=10) as replayer:
        _read_exactly(replayer, len(direct.HELLO) + direct.NONCE)  # a fresh nonce
        replayer.sendall(proof + frame)
        assert _closed_without_answer(replayer)
    assert _refused(gateway) == refused + 2
    assert _rows(gateway) == rows
    test_fixed_size_versions_go_direct_and_answer_as_the_original(gateway)


def _handshake(host: str, port: int, secret: bytes) -> bytes:
    """A genuine router's handshake on a connection of its own; returns the proof it sent."""
    with socket.create_connection((host, port), timeout=10) as router:
        hello = _read_exactly(router, len(direct.HELLO) + direct.NONCE)
        nonce_r, nonce_c = hello[len(direct.HELLO) :], b"c" * direct.NONCE
        proof = nonce_c + hmac.new(secret, b"router" + nonce_r + nonce_c, "sha256").digest()
        router.sendall(proof)
        answer = _read_exactly(router, 32)
        assert answer == hmac.new(secret, b"replica" + nonce_r + nonce_c, "sha256").digest()
    return proof


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def _closed_without_answer(sock: socket.socket) -> bool:
    """The peer closed the connection without sending a byte (a reset counts: the replica
    closes with the stranger's unread bytes still queued)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _rows(gateway: Gateway) -> float:
    return metric_value(gateway, "modelgate_model_rows_total", model="breast_cancer", version="1")


def _refused(gateway: Gateway) -> float:
    return metric_value(
        gateway,
        "modelgate_direct_refused_total",
        model="breast_cancer",
        version="1",
        reason="proof",
    )
