"""Request, batch and shedding metrics of the data plane (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from serve.core.batching import MicroBatcher
from serve.core.dataplane import DataPlane, VersionTarget
from serve.core.errors import InferenceError
from serve.core.routing import ModelRouting, RoutingConfig
from serve.observe.metrics import FLUSH_S, GatewayMetrics
from tests.serve import factories


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    metrics.flush()  # as an in-process exposition does: buffered series wait up to FLUSH_S
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_outcome_and_protocol() -> None:
    metrics = GatewayMetrics()
    plane = factories.metered_plane(metrics)

    async def main() -> None:
        for _ in range(3):
            await plane.infer(factories.request())
        await plane.infer(factories.request(protocol="grpc"))
        for bad in (factories.request(shape=(1, 3)), factories.request(model="nope")):
            with pytest.raises(InferenceError):
                await plane.infer(bad)

    asyncio.run(main())
    count = "modelgate_requests_total"
    assert _value(metrics, count, model="m", version="1", protocol="http", code="ok") == 3
    assert _value(metrics, count, model="m", version="1", protocol="grpc", code="ok") == 1
    assert (
        _value(metrics, count, model="m", version="1", protocol="http", code="invalid_argument")
        == 1
    )
    # an unknown model name gets no series of its own
    assert _value(metrics, count, model="", version="", protocol="http", code="not_found") == 1
    assert (
        _value(
            metrics,
            "modelgate_request_duration_seconds_count",
            model="m",
            version="1",
            protocol="http",
        )
        == 4
    )
    assert _value(metrics, "modelgate_requests_in_flight", model="m") == 0
    assert _value(metrics, "modelgate_batch_rows_count", model="m", version="1") == 4
    assert _value(metrics, "modelgate_batch_duration_seconds_count", model="m", version="1") == 4


def test_batches_and_shedding_are_measured() -> None:
    metrics = GatewayMetrics()
    plane = factories.metered_plane(metrics, delay=0.05, max_queued=4)

    async def main() -> list[object]:
        return await asyncio.gather(
            *(plane.infer(factories.request()) for _ in range(12)), return_exceptions=True
        )

    results = asyncio.run(main())
    shed = sum(isinstance(r, InferenceError) and r.http_status == 503 for r in results)
    assert shed > 0
    assert _value(metrics, "modelgate_shed_total", model="m", version="1") == shed
    assert (
        _value(
            metrics,
            "modelgate_requests_total",
            model="m",
            version="1",
            protocol="http",
            code="overloaded",
        )
        == shed
    )
    batched = _value(metrics, "modelgate_batch_requests_sum", model="m", version="1")
    assert batched == 12 - shed  # every accepted request ran in exactly one batch
    assert _value(metrics, "modelgate_batch_requests_count", model="m", version="1") < batched


def test_weights_and_aliases_are_published_and_follow_reconfiguration() -> None:
    metrics = GatewayMetrics()
    targets = [
        VersionTarget(
            "m", v, factories.manifest(v), MicroBatcher(f"m:{v}", factories.model(0.0)), "c"
        )
        for v in ("1", "2")
    ]
    plane = DataPlane.build(targets, {"m": {"champion": "1"}}, metrics)
    weight, alias = "modelgate_route_weight", "modelgate_alias_info"
    assert _value(metrics, weight, model="m", version="2") == 1  # default: the highest
    assert _value(metrics, alias, model="m", alias="champion", version="1") == 1
    plane.apply_routing(
        RoutingConfig(models={"m": ModelRouting(weights={"1": 9, "2": 1}, aliases={"stable": "1"})})
    )
    assert _value(metrics, weight, model="m", version="1") == pytest.approx(0.9)
    assert _value(metrics, weight, model="m", version="2") == pytest.approx(0.1)
    plane.apply_routing(RoutingConfig(models={"m": ModelRouting(aliases={"stable": "2"})}))
    assert _value(metrics, alias, model="m", alias="stable", version="1") == 0
    assert _value(metrics, alias, model="m", alias="stable", version="2") == 1
    assert _value(metrics, alias, model="m", alias="champion", version="1") == 1


VALUES = [0.0, 0.0002, 0.00021, 0.001, 0.0049, 5.0, 10.0, 11.0, 1e9, 0.3, 0.0002, 2.5]


def _samples(metrics: GatewayMetrics) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


def test_buffered_series_write_what_direct_updates_would() -> None:
    direct, buffered = GatewayMetrics(), GatewayMetrics()
    for m in (direct, buffered):  # create the same children in both
        m.in_flight.labels("m")
        m.requests.labels("m", "1", "http", "ok")
    histogram = buffered.histogram(buffered.request_duration.labels("m", "1", "http"))
    counter = buffered.counter(buffered.requests.labels("m", "1", "http", "ok"))
    gauge = buffered.counter(buffered.in_flight.labels("m"))

    async def main() -> None:
        for v in VALUES:  # values on, between, and past the bucket bounds
            direct.request_duration.labels("m", "1", "http").observe(v)
            histogram.observe(v)
        for _ in range(5):
            direct.requests.labels("m", "1", "http", "ok").inc()
            counter.inc()
        direct.in_flight.labels("m").inc(3)
        direct.in_flight.labels("m").dec()
        gauge.inc(3)
        gauge.dec()
        assert _samples(buffered) != _samples(direct)  # held, for at most FLUSH_S
        await asyncio.sleep(FLUSH_S / 5)
        assert _samples(buffered) != _samples(direct)
        await asyncio.sleep(FLUSH_S * 2)  # the write was due FLUSH_S after the first update
        assert _samples(buffered) == _samples(direct)
        counter.inc(2)
        direct.requests.labels("m", "1", "http", "ok").inc(2)
        buffered.flush()  # what an in-process exposition does first
        assert _samples(buffered) == _samples(direct)

    asyncio.run(main())
    assert _value(
        buffered,
        "modelgate_request_duration_seconds_count",
        model="m",
        version="1",
        protocol="http",
    ) == len(VALUES)


def test_buffered_series_write_at_once_with_no_event_loop() -> None:
    metrics = GatewayMetrics()
    observe = metrics.run_observer("m", "1")
    observe(7, 0.003)
    assert _value(metrics, "modelgate_model_rows_total", model="m", version="1") == 7
    assert (
        _value(metrics, "modelgate_compute_seconds_bucket", model="m", version="1", le="0.005") == 1
    )
    assert (
        _value(metrics, "modelgate_compute_seconds_bucket", model="m", version="1", le="0.002") == 0
    )
