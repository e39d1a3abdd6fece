"""The demand policy (serve/ray/autoscale.py) on the reports replicas pass on from routers."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from serve.ray.autoscale import RouterPolicy, decide, demand, demand_policy


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


class _Config:
    def get_target_ongoing_requests(self) -> float:
        return 2.0


def _context(held: float, state: dict[str, object], current: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        aggregated_metrics={"demand:r1": {"replica-a": held}},
        config=_Config(),
        policy_state=state,
        current_num_replicas=current,
        target_num_replicas=current,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=3,
        deployment_name="slow-v1",
    )


def test_the_policy_logs_each_change_of_its_bounded_decision_once() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        state: dict[str, object] = {}
        for held in (0, 1, 2):  # asks for at most one replica: the running count, no change
            desired, state = demand_policy(_context(held, state))
        assert records == []
        desired, state = demand_policy(_context(12, state))  # 6, bounded to 3
        assert desired == 6 and len(records) == 1
        assert "hold 12 requests" in records[0].getMessage()
        assert records[0].getMessage().endswith("asking for 6.00: 3")
        for held in (10, 8, 6):  # still 3 once bounded: logged already
            desired, state = demand_policy(_context(held, state, current=3))
        assert len(records) == 1
        demand_policy(_context(0, state, current=3))  # back to the minimum
        assert len(records) == 2 and records[1].getMessage().endswith(": 1")
    finally:
        logger.removeHandler(handler)
        logger.level = level


def test_the_router_policy_asks_for_the_cores_its_replicas_keep_busy_over_the_target() -> None:
    policy = RouterPolicy(target_busy=0.5)

    def context(busy: dict[str, float], state: dict[str, object]) -> SimpleNamespace:
        return SimpleNamespace(
            aggregated_metrics={"busy": busy},
            policy_state=state,
            current_num_replicas=len(busy),
            target_num_replicas=len(busy),
            capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=4,
            deployment_name="Router",
        )

    desired, state = policy(context({"r1": 0.9}, {}))
    assert desired == 1.8 and state["decision"] == 2
    desired, state = policy(context({"r1": 0.45, "r2": 0.5}, state))
    assert desired == pytest.approx(1.9)
    desired, _ = policy(context({"r1": 0.02, "r2": 0.03}, state))
    assert desired == pytest.approx(0.1)  # Ray keeps min_replicas
    assert policy(context({}, {}))[0] == 0  # no report yet: nothing asked for
