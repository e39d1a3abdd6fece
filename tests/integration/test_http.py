"""Every HTTP endpoint of the Open Inference Protocol, JSON and binary, against the real gateway."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest
import requests
from sklearn.datasets import load_iris

from serve.core import tensors
from tests.integration.bodies import X_BC, assert_churn_answers_as_the_original, infer_body, post
from tests.integration.conftest import Gateway


def test_health_and_server_metadata(gateway: Gateway) -> None:
    assert requests.get(gateway.base + "/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(gateway.base + "/v2/health/ready", timeout=10).json() == {"ready": True}
    meta = requests.get(gateway.base + "/v2", timeout=10).json()
    assert meta["name"] == "modelgate" and "binary_tensor_data" in meta["extensions"]
    assert meta["version"] == importlib.metadata.version("modelgate")  # pyproject's, installed


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/breast_cancer",
        "/v2/models/breast_cancer/versions/3",
        "/v2/models/breast_cancer/versions/canary",
    ],
)
def test_model_metadata(gateway: Gateway, path: str) -> None:
    meta = requests.get(gateway.base + path, timeout=10).json()
    assert meta["name"] == "breast_cancer" and meta["versions"] == ["1", "2", "3"]
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]


def test_model_ready_index_and_stats(gateway: Gateway) -> None:
    for path in ("/v2/models/iris/ready", "/v2/models/breast_cancer/versions/2/ready"):
        response = requests.get(gateway.base + path, timeout=10)
        assert response.status_code == 200 and response.json()["ready"] is True
    index = post(gateway, "/v2/repository/index", json={}).json()
    assert {"name": "breast_cancer", "version": "2", "state": "READY"} in index
    assert len(index) == 5
    post(
        gateway,
        "/v2/models/iris/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
            ]
        },
    )
    stats = requests.get(gateway.base + "/v2/models/iris/stats", timeout=10).json()
    [entry] = stats["model_stats"]
    assert entry["name"] == "iris" and entry["inference_count"] >= 1
    assert entry["inference_stats"]["compute_infer"]["ns"] > 0


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_json_answers_match_the_original(gateway: Gateway, version: str) -> None:
    rows = X_BC[::11]
    response = post(
        gateway,
        f"/v2/models/breast_cancer/versions/{version}/infer",
        json=infer_body(rows, id="req-7"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == version
    doc = response.json()
    assert doc["id"] == "req-7" and doc["model_version"] == version
    outputs = {o["name"]: o for o in doc["outputs"]}
    original = gateway.originals[f"breast_cancer:{version}"]
    expected = original.predict_proba(rows.astype(np.float64))
    assert outputs["label"]["data"] == original.predict(rows.astype(np.float64)).tolist()
    got = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_default_route_and_alias(gateway: Gateway) -> None:
    body = infer_body(X_BC[:1])
    assert (
        post(gateway, "/v2/models/breast_cancer/infer", json=body).headers["x-model-version"] == "1"
    )
    assert (
        post(gateway, "/v2/models/breast_cancer/versions/canary/infer", json=body).headers[
            "x-model-version"
        ]
        == "2"
    )


def test_binary_request_and_response(gateway: Gateway) -> None:
    rows = X_BC[:5]
    raw = tensors.to_raw("FP32", rows)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [5, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    response = post(
        gateway,
        "/v2/models/breast_cancer/versions/1/infer",
        data=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 200, response.text
    n = int(response.headers["inference-header-content-length"])
    doc = json.loads(response.content[:n])
    assert [o["name"] for o in doc["outputs"]] == ["probabilities", "label"]
    probs = np.frombuffer(response.content[n:], np.float32).reshape(5, 2)
    expected = gateway.originals["breast_cancer:1"].predict_proba(rows.astype(np.float64))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert doc["outputs"][1]["data"] == np.argmax(expected, axis=1).tolist()


def test_requested_output_subset_and_parameters(gateway: Gateway) -> None:
    body = infer_body(X_BC[:2], outputs=[{"name": "label"}], parameters={"trace": "abc"})
    doc = post(gateway, "/v2/models/breast_cancer/infer", json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["label"]


def test_mixed_type_model_with_strings(gateway: Gateway) -> None:
    assert_churn_answers_as_the_original(gateway)


def test_a_thousand_rows_in_one_request(gateway: Gateway) -> None:
    rows = np.resize(X_BC, (1000, 30)).astype(np.float32)
    doc = post(gateway, "/v2/models/breast_cancer/versions/2/infer", json=infer_body(rows)).json()
    label = next(o for o in doc["outputs"] if o["name"] == "label")
    assert label["shape"] == [1000]
    expected = gateway.originals["breast_cancer:2"].predict(rows.astype(np.float64))
    assert label["data"] == expected.tolist()


def test_iris_nested_data(gateway: Gateway) -> None:
    x = load_iris(return_X_y=True)[0][:3].astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": x.tolist()}]}
    doc = post(gateway, "/v2/models/iris/infer", json=body).json()
    label = next(o for o in doc["outputs"] if o["name"] == "label")
    assert label["data"] == gateway.originals["iris:1"].predict(x.astype(np.float64)).tolist()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", infer_body(X_BC[:1]), 404, "unknown model 'nope'; models are: "),
        (
            "/v2/models/breast_cancer/versions/9/infer",
            infer_body(X_BC[:1]),
            404,
            "no version or alias '9'",
        ),
        (
            "/v2/models/breast_cancer/infer",
            {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32", "data": [0.0] * 30}]},
            400,
            "unknown input 'x'; inputs are: input",
        ),
        (
            "/v2/models/breast_cancer/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [1, 29], "datatype": "FP64", "data": [0.0] * 29}
                ]
            },
            400,
            "input 'input' must be FP32 with shape [-1, 30]; got FP64 [1, 29]",
        ),
        (
            "/v2/models/breast_cancer/infer",
            {
                "inputs": [
                    {"name": "input", "shape": [2, 30], "datatype": "FP32", "data": [0.0] * 30}
                ]
            },
            400,
            "input 'input': shape [2, 30] needs 60 values; got 30",
        ),
        (
            "/v2/models/breast_cancer/versions/1/infer",  # dedicated: the answer takes a Ray call
            infer_body(X_BC[:1], parameters={"timeout": 1}),  # one microsecond
            504,
            "deadline of 0.001 ms",
        ),
        (
            "/v2/models/breast_cancer/infer",
            infer_body(X_BC[:1], parameters={"timeout": "soon"}),
            400,
            "parameter 'timeout' must be a positive number of microseconds",
        ),
    ],
)
def test_errors_over_http(
    gateway: Gateway, path: str, body: dict, status: int, message: str
) -> None:
    response = post(gateway, path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_bodies(gateway: Gateway) -> None:
    bad_json = post(gateway, "/v2/models/breast_cancer/infer", data=b"{oops")
    assert bad_json.status_code == 400 and "malformed JSON" in bad_json.json()["error"]
    framing = post(
        gateway,
        "/v2/models/breast_cancer/infer",
        data=b"{}",
        headers={"Inference-Header-Content-Length": "500"},
    )
    assert framing.status_code == 400 and "outside the body" in framing.json()["error"]
    huge = post(gateway, "/v2/models/breast_cancer/infer", data=b" " * (2 << 20))
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]
    wrong_method = requests.get(gateway.base + "/v2/models/breast_cancer/infer", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    for body in (b"", b"{oops", b'{"inputs": [{"name": "x", "shape": [1e99]}]}'):
        unknown = post(gateway, "/v2/models/nope/infer", data=body)  # looked up first
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
    duplicated = infer_body(X_BC[:1]) | {"outputs": [{"name": "label"}] * 1000}
    refused = post(gateway, "/v2/models/breast_cancer/infer", json=duplicated)
    assert refused.status_code == 400 and "asked for more than once" in refused.json()["error"]
    nulls = infer_body(X_BC[:1])
    nulls["inputs"][0]["data"][0][3] = None  # was read as NaN: a confident, wrong prediction
    refused = post(gateway, "/v2/models/breast_cancer/infer", json=nulls)
    assert refused.status_code == 400 and "got null" in refused.json()["error"]
    # The gateway is still fine after all of that.
    after = post(gateway, "/v2/models/breast_cancer/infer", json=infer_body(X_BC[:1]))
    assert after.ok, after.text


def test_head_is_answered_on_every_get_route_without_a_body(gateway: Gateway) -> None:
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/iris", "/metrics"):
        head = requests.head(gateway.base + path, timeout=10)
        get = requests.get(gateway.base + path, timeout=10)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_oversized_headers_and_deep_nesting_are_refused_with_4xx(gateway: Gateway) -> None:
    """Limits in front of the decoder: HAProxy and the replica's HTTP server cap the request
    head (a header over ~16 KiB is refused), and JSON deeper than 1,024 levels is malformed."""
    path = "/v2/models/breast_cancer/infer"
    body = infer_body(X_BC[:1])
    big_header = post(gateway, path, json=body, headers={"x-junk": "a" * (64 << 10)})
    assert 400 <= big_header.status_code < 500
    many = {f"x-junk-{i}": "b" * 100 for i in range(400)}  # 40 KiB of head in small headers
    assert 400 <= post(gateway, path, json=body, headers=many).status_code < 500
    deep = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused = post(gateway, path, data=deep)
    assert refused.status_code == 400 and "depth limit" in refused.json()["error"]
    data: object = X_BC[0].tolist()
    for _ in range(100):  # within the JSON limit, deeper than any tensor (numpy: 64 dims)
        data = [data]
    wrong = post(gateway, path, json={"inputs": [{**body["inputs"][0], "data": data}]})
    assert wrong.status_code == 400 and "input 'input'" in wrong.json()["error"]
    assert post(gateway, path, json=body).ok  # and the gateway serves on
