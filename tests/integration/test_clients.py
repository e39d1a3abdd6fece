"""Triton's standard Python clients, unchanged, over HTTP (binary by default) and gRPC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import Gateway

httpclient = pytest.importorskip("tritonclient.http", reason="installed by `make test`")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="installed by `make test`")

X_BC = load_breast_cancer(return_X_y=True)[0][:8].astype(np.float32)


def test_triton_http_client(gateway: Gateway) -> None:
    client = httpclient.InferenceServerClient(url=gateway.base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer", "2")
    meta = client.get_model_metadata("breast_cancer")
    assert meta["inputs"][0]["name"] == "input"
    tensor = httpclient.InferInput("input", list(X_BC.shape), "FP32")
    tensor.set_data_from_numpy(X_BC, binary_data=True)
    result = client.infer("breast_cancer", [tensor], model_version="2")
    expected = gateway.originals["breast_cancer:2"].predict_proba(X_BC.astype(np.float64))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-4)
    assert result.get_response()["model_version"] == "2"
    json_tensor = httpclient.InferInput("input", list(X_BC.shape), "FP32")
    json_tensor.set_data_from_numpy(X_BC, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    labels = client.infer("breast_cancer", [json_tensor], outputs=outputs).as_numpy("label")
    assert labels.tolist() == np.argmax(expected, axis=1).tolist()
    index = client.get_model_repository_index()
    assert {"name": "iris", "version": "1", "state": "READY"} in index
    assert client.get_inference_statistics("breast_cancer")["model_stats"]


def test_triton_grpc_client(gateway: Gateway) -> None:
    client = grpcclient.InferenceServerClient(url=gateway.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer")
    meta = client.get_model_metadata("breast_cancer", as_json=True)
    assert meta["inputs"][0]["datatype"] == "FP32"
    tensor = grpcclient.InferInput("input", list(X_BC.shape), "FP32")
    tensor.set_data_from_numpy(X_BC)
    result = client.infer("breast_cancer", [tensor], model_version="3")
    expected = gateway.originals["breast_cancer:3"].predict_proba(X_BC.astype(np.float64))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-4)
    assert result.get_response().model_version == "3"
