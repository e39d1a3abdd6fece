"""The demand policy (serve/ray/autoscale.py) on the reports replicas pass on from routers."""

from __future__ import annotations

from serve.ray.autoscale import decide, demand


def test_demand_counts_each_router_once_across_the_replicas_it_reached() -> None:
    metrics = {
        "demand:r1": {"replica-a": 12.0, "replica-b": 10.0},  # r1 reached both: counted once
        "demand:r2": {"replica-b": 5.0},
        "shed:r1": {"replica-a": 3.0, "replica-b": 2.0},
        "shed:r2": {"replica-b": 0.0},
        "unrelated": {"replica-a": 99.0},
    }
    held, shed = demand(metrics)
    assert held == 17.0
    assert shed == {"shed:r1": 3.0, "shed:r2": 0.0}
    assert demand({}) == (0.0, {})


def test_replicas_follow_the_requests_held_per_replica_and_a_shed_asks_for_one_more() -> None:
    assert decide(held=12, shed={}, shed_before={}, current=1, target=4) == 3
    assert decide(held=0, shed={}, shed_before={}, current=3, target=4) == 0  # Ray bounds it
    # shed since the last decision: demand beyond what the routers can hold
    assert decide(held=2, shed={"shed:r1": 5}, shed_before={"shed:r1": 1}, current=2, target=4) == 3
    # a router first heard of, or one that shed nothing new: no extra replica
    assert decide(held=2, shed={"shed:r1": 5}, shed_before={}, current=2, target=4) == 0.5
    assert (
        decide(held=2, shed={"shed:r1": 5}, shed_before={"shed:r1": 5}, current=2, target=4) == 0.5
    )
