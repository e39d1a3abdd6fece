"""Factories the data plane's tests share (no Ray): a two-feature classifier's manifest, stand-in
models, and data planes built around them."""

from __future__ import annotations

import asyncio

import numpy as np

from converters.manifest import Manifest
from converters.spec import Signature, TensorSpec
from serve.core.batching import MicroBatcher
from serve.core.dataplane import DataPlane, VersionTarget
from serve.core.errors import ErrorCode, InferenceError
from serve.core.types import InferRequest, Tensor
from serve.observe.metrics import GatewayMetrics

SIG = Signature(
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 2])],
    outputs=[
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
)


def manifest(version: str) -> Manifest:
    return Manifest(
        name="m",
        version=version,
        source_uri=f"models:/m/{version}",
        registry="-",
        flavor="sklearn",
        source_sha256="-",
        sha256="-",
        signature=SIG,
        task="classification",
        opset={},
        converter={},
        created_at="-",
    )


def model(shift: float, fail: bool = False, delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await asyncio.sleep(delay)
        if fail:
            raise InferenceError(ErrorCode.INTERNAL, "shadow broke")
        p1 = np.clip(feeds["input"][:, 0] + shift, 0, 1).astype(np.float32)
        probs = np.stack([1 - p1, p1], axis=1)
        return {"label": (p1 > 0.5).astype(np.int64), "probabilities": probs}

    return run


class Slow:
    """A stand-in model that takes `delay` seconds per batch and records what it ran."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[int] = []

    async def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(feeds["input"]))
        await asyncio.sleep(self.delay)
        n = len(feeds["input"])
        return {"label": np.zeros(n, np.int64), "probabilities": np.zeros((n, 2), np.float32)}


def slow_plane(model: Slow, default_s: float | None) -> tuple[DataPlane, GatewayMetrics]:
    metrics = GatewayMetrics()
    batcher = MicroBatcher("m:1", model, max_in_flight=1)
    target = VersionTarget("m", "1", manifest("1"), batcher, "c", default_s)
    return DataPlane.build([target], {}, metrics), metrics


def metered_plane(metrics: GatewayMetrics, delay: float = 0.0, max_queued: int = 1024) -> DataPlane:
    batcher = MicroBatcher(
        "m:1",
        model(0.0, delay=delay),
        max_in_flight=1,
        max_queued=max_queued,
        on_batch=metrics.batch_observer("m", "1"),
    )
    return DataPlane.build([VersionTarget("m", "1", manifest("1"), batcher, "c")], {}, metrics)


def request(
    model: str = "m", shape: tuple[int, int] = (1, 2), protocol: str = "http"
) -> InferRequest:
    x = np.zeros(shape, np.float32)
    return InferRequest(model, None, [Tensor("input", "FP32", x)], protocol=protocol)
