"""API keys over HTTP and gRPC against a gateway app that requires them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from serve.client.samples import grpc_request, json_request
from serve.core.auth import new_key
from serve.protos import grpc_predict_v2_pb2 as pb
from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.integration.conftest import Gateway, deploy_beside, restore

PREFIX = "/secured"
IRIS_KEY, CHURN_KEY, ADMIN_KEY = new_key(), new_key(), new_key()
APP: dict[str, Any] = {
    "name": "secured",
    "route_prefix": PREFIX,
    "import_path": "serve.app:build_app",
    "args": {
        "models": [
            {"name": "iris", "versions": [{"uri": "models:/iris/1", "placement": "colocated"}]}
        ],
        "auth": {
            "keys": [
                {"name": "iris-app", "sha256": IRIS_KEY[1], "models": ["iris"]},
                {"name": "churn-app", "sha256": CHURN_KEY[1], "models": ["churn"]},
                {"name": "ops", "sha256": ADMIN_KEY[1], "models": [], "admin": True},
            ]
        },
    },
}
ROW = {"input": np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)}


@pytest.fixture(scope="module")
def secured(gateway: Gateway) -> Iterator[Gateway]:
    deploy_beside(gateway, APP)
    try:
        yield gateway
    finally:
        restore(gateway)


def _bearer(key: tuple[str, str] | None) -> dict[str, str]:
    return {} if key is None else {"authorization": f"Bearer {key[0]}"}


def test_http_keys(secured: Gateway) -> None:
    base = secured.base + PREFIX

    def infer(key: tuple[str, str] | None) -> requests.Response:
        headers = {"content-type": "application/json", **_bearer(key)}
        return requests.post(
            f"{base}/v2/models/iris/infer", data=json_request(ROW), headers=headers, timeout=10
        )

    missing = infer(None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "API key is required" in missing.json()["error"]
    wrong = infer(("not-a-key", ""))
    assert wrong.status_code == 401 and wrong.json()["error"] == "unknown API key"
    other = infer(CHURN_KEY)
    assert other.status_code == 403 and "may not use model 'iris'" in other.json()["error"]
    assert infer(IRIS_KEY).status_code == 200

    assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200  # open
    index = f"{base}/v2/repository/index"
    assert requests.post(index, json={}, headers=_bearer(IRIS_KEY), timeout=10).status_code == 403
    admin = requests.post(index, json={}, headers=_bearer(ADMIN_KEY), timeout=10)
    assert admin.status_code == 200 and admin.json()[0]["name"] == "iris"


def test_grpc_keys(secured: Gateway) -> None:
    with grpc.insecure_channel(secured.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def infer(key: tuple[str, str] | None) -> pb.ModelInferResponse:
            metadata = [("application", "secured"), *_bearer(key).items()]
            return stub.ModelInfer(grpc_request("iris", ROW), metadata=metadata, timeout=10)

        for key, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (CHURN_KEY, grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                infer(key)
            assert caught.value.code() == code
        assert infer(IRIS_KEY).model_name == "iris"


def test_the_api_document_is_the_callers_own(secured: Gateway) -> None:
    """With keys on, GET /v2/openapi.json needs one and lists only the models it may use:
    a stranger learns no model's name."""
    url = f"{secured.base}{PREFIX}/v2/openapi.json"
    stranger = requests.get(url, timeout=10)
    assert stranger.status_code == 401 and "iris" not in stranger.text

    def listed(key: tuple[str, str]) -> str:
        response = requests.get(url, headers=_bearer(key), timeout=10)
        assert response.status_code == 200
        return response.text

    assert "iris" in listed(IRIS_KEY)
    assert "iris" not in listed(CHURN_KEY) and "iris" not in listed(ADMIN_KEY)
