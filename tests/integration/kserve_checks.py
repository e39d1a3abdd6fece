"""KServe's standard Python clients (`kserve.InferenceRESTClient`, `kserve.InferenceGRPCClient`)
against the gateway, run in a process of their own.

KServe's generated `inference.*` messages go into protobuf's default descriptor pool, like
modelgate's stubs and Triton's (see triton_checks.py): one client library per process.

Usage: python -m tests.integration.kserve_checks HTTP_BASE_URL GRPC_HOSTPORT EXPECTED.npz
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    InferResponse,
    RESTConfig,
)
from kserve.protocol.infer_type import RequestedOutput


def _request(x: np.ndarray, binary: bool, **kwargs: Any) -> InferRequest:
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest("breast_cancer", [tensor], **kwargs)


def _output(response: InferResponse, name: str) -> np.ndarray:
    output = response.get_output_by_name(name)
    assert output is not None, [o.name for o in response.outputs]
    return np.asarray(output.as_numpy())


async def check_rest(base: str, x: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        assert await client.is_server_live(base) and await client.is_server_ready(base)
        assert await client.is_model_ready(base, "breast_cancer")
        # Binary tensors (Triton's extension, which the KServe client speaks) and the default route.
        headers: dict[str, str] = {}
        binary = await client.infer(
            base, _request(x, binary=True), model_name="breast_cancer", response_headers=headers
        )
        assert isinstance(binary, InferResponse)
        assert binary.model_name == "breast_cancer"
        # KServe's REST client drops a response's `model_version`; the gateway's header names it.
        version = headers["x-model-version"]
        np.testing.assert_allclose(
            _output(binary, "probabilities"), expected[f"v{version}"], atol=1e-4
        )
        # JSON tensors, a request id echoed, one requested output.
        json_request = _request(
            x, binary=False, request_id="kserve-rest-1", request_outputs=[RequestedOutput("label")]
        )
        labels = await client.infer(base, json_request, model_name="breast_cancer")
        assert isinstance(labels, InferResponse) and labels.id == "kserve-rest-1"
        assert [o.name for o in labels.outputs] == ["label"]
        assert _output(labels, "label").tolist() == np.argmax(expected["v1"], axis=1).tolist()
        # An unknown model: KServe's client raises the HTTP error the gateway answered.
        try:
            await client.infer(base, _request(x, binary=False), model_name="no_such_model")
        except Exception as error:  # httpx.HTTPStatusError
            assert "404" in str(error), error
        else:
            raise AssertionError("an unknown model was answered")
    finally:
        await client.close()


async def check_grpc(url: str, x: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    client = InferenceGRPCClient(url, retries=0, timeout=30)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("breast_cancer")
        response = await client.infer(_request(x, binary=True, model_version="3"))
        assert response.model_version == "3"
        np.testing.assert_allclose(_output(response, "probabilities"), expected["v3"], atol=1e-4)
        typed = await client.infer(_request(x, binary=False, model_version="1", request_id="g-1"))
        assert typed.id == "g-1" and typed.model_version == "1"
        np.testing.assert_allclose(_output(typed, "probabilities"), expected["v1"], atol=1e-4)
    finally:
        await client.close()


def main() -> None:
    base, grpc_url, data = sys.argv[1:4]
    arrays = dict(np.load(data))
    x = arrays.pop("x")
    asyncio.run(check_rest(base, x, arrays))
    asyncio.run(check_grpc(grpc_url, x, arrays))
    print("kserve clients: all checks passed")


if __name__ == "__main__":
    main()
