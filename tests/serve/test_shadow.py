"""Shadow traffic in the data plane, with real batchers and stand-in models (no Ray)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from serve.core.batching import MicroBatcher
from serve.core.dataplane import DataPlane, VersionTarget
from serve.core.routing import ModelRouting, RoutingConfig
from serve.core.shadow import ShadowConfig, compare
from serve.core.types import InferRequest, Tensor
from serve.observe.metrics import GatewayMetrics
from tests.serve import factories


def _plane(shadow_model, metrics: GatewayMetrics, shadow: ShadowConfig) -> DataPlane:  # type: ignore[no-untyped-def]
    targets = [
        VersionTarget(
            "m", "1", factories.manifest("1"), MicroBatcher("m:1", factories.model(0.0)), "c"
        ),
        VersionTarget("m", "2", factories.manifest("2"), MicroBatcher("m:2", shadow_model), "c"),
    ]
    plane = DataPlane.build(targets, {}, metrics)
    plane.apply_routing(RoutingConfig(models={"m": ModelRouting(weights={"1": 1}, shadow=shadow)}))
    return plane


def _request(x: list[float], request_id: str = "") -> InferRequest:
    return InferRequest(
        "m", None, [Tensor("input", "FP32", np.array([x], np.float32))], id=request_id
    )


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(
        name, {"model": "m", "primary": "1", "shadow": "2", **labels}
    )
    return value or 0.0


async def _settle(plane: DataPlane) -> None:
    for runner in plane.shadows.values():
        while runner.busy:
            await asyncio.sleep(0.01)


def test_compare_labels_and_scores() -> None:
    a = {"label": np.array([0, 1, 1]), "probabilities": np.array([[1, 0], [0, 1], [0.4, 0.6]])}
    b = {"label": np.array([0, 1, 0]), "probabilities": np.array([[1, 0], [0, 1], [0.6, 0.4]])}
    result = compare(a, b)
    assert (result.rows, result.agree) == (3, 2)
    assert result.max_abs_diff == pytest.approx(0.2) and result.disagrees


def test_every_request_is_compared_at_ratio_one(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    log = tmp_path / "shadow.jsonl"
    plane = _plane(
        factories.model(0.3), metrics, ShadowConfig(version="2", ratio=1.0, log_path=str(log))
    )

    async def main() -> list[str]:
        rows = [[0.1, 0], [0.4, 0], [0.9, 0], [0.35, 0]]
        answers = [await plane.infer(_request(r, f"r{i}")) for i, r in enumerate(rows)]
        await _settle(plane)
        return [a.version for a in answers]

    assert asyncio.run(main()) == ["1"] * 4  # callers get the primary's answers
    assert _value(metrics, "modelgate_shadow_requests_total", outcome="compared") == 4
    # +0.3 flips the labels of 0.4 and 0.35 (to 1), not of 0.1 or 0.9
    assert _value(metrics, "modelgate_shadow_rows_total", agree="true") == 2
    assert _value(metrics, "modelgate_shadow_rows_total", agree="false") == 2
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 4  # every copy differs by 0.3 > threshold
    flipped = [ln for ln in lines if ln["labels_agree"] == 0]
    assert {ln["id"] for ln in flipped} == {"r1", "r3"}
    assert flipped[0]["inputs"]["input"] == [[0.4, 0.0]]


def test_a_failing_shadow_never_fails_the_primary() -> None:
    metrics = GatewayMetrics()
    plane = _plane(factories.model(0, fail=True), metrics, ShadowConfig(version="2", ratio=1.0))

    async def main() -> None:
        answer = await plane.infer(_request([0.9, 0]))
        assert answer.version == "1" and answer.outputs[0].array.tolist() == [1]
        await _settle(plane)

    asyncio.run(main())
    assert _value(metrics, "modelgate_shadow_requests_total", outcome="error") == 1


def test_a_slow_shadow_never_slows_the_primary_and_the_cap_drops_copies() -> None:
    metrics = GatewayMetrics()
    plane = _plane(
        factories.model(0, delay=0.5),
        metrics,
        ShadowConfig(version="2", ratio=1.0, max_in_flight=2),
    )

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(5):
            await plane.infer(_request([0.2, 0]))
        elapsed = loop.time() - started
        await _settle(plane)
        return elapsed

    assert asyncio.run(main()) < 0.25  # five primaries answered while the shadow sleeps 0.5 s
    assert _value(metrics, "modelgate_shadow_requests_total", outcome="dropped") == 3
    assert _value(metrics, "modelgate_shadow_requests_total", outcome="compared") == 2


def test_ratio_samples_requests() -> None:
    metrics = GatewayMetrics()
    plane = _plane(factories.model(0), metrics, ShadowConfig(version="2", ratio=0.25))

    async def main() -> None:
        for _ in range(800):
            await plane.infer(_request([0.2, 0]))
        await _settle(plane)

    asyncio.run(main())
    compared = _value(metrics, "modelgate_shadow_requests_total", outcome="compared")
    assert 140 <= compared <= 260  # 200 expected


def test_shadow_version_must_be_deployed() -> None:
    plane = _plane(factories.model(0), GatewayMetrics(), ShadowConfig(version="2", ratio=1.0))
    with pytest.raises(ValueError, match="shadow version '7'"):
        plane.apply_routing(
            RoutingConfig(models={"m": ModelRouting(shadow=ShadowConfig(version="7", ratio=1.0))})
        )
    assert plane.shadows["m"].target.version == "2"  # the routing in force stayed


def test_disagreement_log_rotates(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    config = ShadowConfig(
        version="2", ratio=1.0, log_path=str(log), log_max_bytes=2048, log_backups=2
    )
    plane = _plane(factories.model(0.3), GatewayMetrics(), config)

    async def main() -> None:
        for i in range(60):
            await plane.infer(_request([0.4, 0], f"r{i}"))
        await _settle(plane)

    asyncio.run(main())
    plane.apply_routing(RoutingConfig())  # closes the log
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["shadow.jsonl", "shadow.jsonl.1", "shadow.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    last = [json.loads(line) for line in log.read_text().splitlines()]
    assert last and last[-1]["id"] == "r59"


def test_reapplying_the_same_routing_keeps_the_log_working(tmp_path: Path) -> None:
    log = tmp_path / "shadow.jsonl"
    config = ShadowConfig(version="2", ratio=1.0, log_path=str(log))
    plane = _plane(factories.model(0.3), GatewayMetrics(), config)
    routing = RoutingConfig(models={"m": ModelRouting(weights={"1": 1}, shadow=config)})

    async def main() -> None:
        await plane.infer(_request([0.4, 0], "before"))
        await _settle(plane)
        old = plane.shadows["m"]
        plane.apply_routing(routing)  # Ray may call reconfigure again with the same config
        await plane.infer(_request([0.4, 0], "after"))
        await _settle(plane)
        await asyncio.sleep(0.01)
        assert old._worker is not None and old._worker.done()  # the old worker ended

    asyncio.run(main())
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert ids == ["before", "after"]
