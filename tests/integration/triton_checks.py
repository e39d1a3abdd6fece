"""Triton's standard Python clients against the gateway, run in a process of their own.

tritonclient.grpc registers Triton's `inference.*` messages in protobuf's default descriptor pool,
and so do modelgate's stubs: the two cannot be imported into one process. A client application
never needs both; the test runs this script in a subprocess.

Usage: python -m tests.integration.triton_checks HTTP_HOSTPORT GRPC_HOSTPORT EXPECTED.npz
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def check_http(url: str, x: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer", "2")
    assert client.get_model_metadata("breast_cancer")["inputs"][0]["name"] == "input"
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer("breast_cancer", [tensor], model_version="2")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["v2"], atol=1e-4)
    assert result.get_response()["model_version"] == "2"
    json_tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    json_tensor.set_data_from_numpy(x, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    labels = client.infer("breast_cancer", [json_tensor], outputs=outputs).as_numpy("label")
    assert labels.tolist() == np.argmax(expected["v1"], axis=1).tolist()
    index = client.get_model_repository_index()
    assert {"name": "iris", "version": "1", "state": "READY"} in index
    assert client.get_inference_statistics("breast_cancer")["model_stats"]


def check_grpc(url: str, x: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    client = grpcclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast_cancer")
    meta = client.get_model_metadata("breast_cancer", as_json=True)
    assert meta["inputs"][0]["datatype"] == "FP32"
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("breast_cancer", [tensor], model_version="3")
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["v3"], atol=1e-4)
    assert result.get_response().model_version == "3"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "iris", "version": "1", "state": "READY"} in index
    stats = client.get_inference_statistics("breast_cancer", "3", as_json=True)["model_stats"]
    assert [s["version"] for s in stats] == ["3"] and int(stats[0]["inference_count"]) >= len(x)
    success = stats[0]["inference_stats"]["success"]
    assert int(success["count"]) >= 1 and int(success["ns"]) > 0


def main() -> None:
    http_url, grpc_url, data = sys.argv[1:4]
    arrays = dict(np.load(data))
    x = arrays.pop("x")
    check_http(http_url, x, arrays)
    check_grpc(grpc_url, x, arrays)
    print("triton clients: all checks passed")


if __name__ == "__main__":
    main()
