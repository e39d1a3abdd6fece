"""Reference points for `make bench`, deployed next to the gateway in the same run.

- `baseline_app`: ONE Ray Serve deployment running the same ONNX model in process: the floor of
  what Ray Serve costs, with none of the gateway's protocol work, validation or routing; over
  HTTP (JSON) and over gRPC (Ray Serve's own gRPC ingress, the Open Inference Protocol's
  ModelInfer with raw tensor contents, as the gateway's gRPC scenario sends).
- `plain_app`: a router deployment calling a model deployment through a handle, one call per
  request, on Ray Serve's defaults: what a straightforward Ray Serve design gives.
- `loadtests.floor:floor_app`: the baseline's handler inside the gateway's Router (its own
  module, so that the baseline's replica imports none of the gateway).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import onnxruntime as ort
from ray import serve
from ray.serve.deployment import Deployment
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve.protos import grpc_predict_v2_pb2 as pb

_DATATYPES = {"<f4": "FP32", "<i8": "INT64", "<i4": "INT32", "<f8": "FP64"}


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(f"{path}/model.onnx", options, providers=["CPUExecutionProvider"])


def _rows(doc: dict[str, Any]) -> np.ndarray:
    tensor = doc["inputs"][0]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def _answer(names: list[str], values: list[np.ndarray]) -> JSONResponse:
    return JSONResponse(
        {
            "outputs": [
                {"name": n, "shape": list(v.shape), "data": v.ravel().tolist()}
                for n, v in zip(names, values, strict=True)
            ]
        }
    )


@serve.deployment(max_ongoing_requests=256)
class InProcess:
    def __init__(self, artifact: str) -> None:
        self.session = _session(artifact)
        self.names = [o.name for o in self.session.get_outputs()]

    async def __call__(self, request: Request) -> JSONResponse:
        x = _rows(await request.json())
        return _answer(self.names, self.session.run(self.names, {"input": x}))

    async def ModelInfer(self, message: Any) -> pb.ModelInferResponse:
        """The least a ModelInfer can do: raw FP32 in, raw out. (The configs' servicer hands
        the request over as bytes; Ray's generated one would have decoded it in the server.)"""
        request = message
        if isinstance(request, bytes):
            request = pb.ModelInferRequest.FromString(request)
        spec = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(spec.shape)
        values = self.session.run(self.names, {"input": x})
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, value in zip(self.names, values, strict=True):
            response.outputs.add(name=name, datatype=_DATATYPES[value.dtype.str], shape=value.shape)
            response.raw_output_contents.append(value.tobytes())
        return response


@serve.deployment
class PlainModel:
    def __init__(self, artifact: str) -> None:
        self.session = _session(artifact)
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.names, {"input": x})  # type: ignore[no-any-return]


@serve.deployment
class PlainRouter:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.names = ["label", "probabilities"]

    async def __call__(self, request: Request) -> JSONResponse:
        values = await self.model.remote(_rows(await request.json()))
        return _answer(self.names, values)


def _deployment(cls: object) -> Deployment:
    return cast(Deployment, cls)  # `@serve.deployment` made it one; mypy sees the class


def baseline_app(args: dict[str, str]) -> serve.Application:
    return (
        _deployment(InProcess).options(ray_actor_options={"num_cpus": 0.1}).bind(args["artifact"])
    )


def plain_app(args: dict[str, str]) -> serve.Application:
    model = (
        _deployment(PlainModel).options(ray_actor_options={"num_cpus": 0.1}).bind(args["artifact"])
    )
    return _deployment(PlainRouter).options(ray_actor_options={"num_cpus": 0.1}).bind(model)
