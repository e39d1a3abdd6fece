"""Autoscaling a dedicated version that its routers reach over the direct transport.

Ray Serve's default policy counts requests that come through handles: it sees none of a
version's direct-transport load. And the demand is not in the replicas anyway: each router
keeps at most `batching.max_in_flight` batches per live replica in flight and queues the rest.
So every frame a router sends says what it holds for the version (requests queued or in a
batch, and how many it has shed so far: serve/transport/direct.py), each replica reports the
latest from every router (`ModelVersion.record_autoscaling_stats`), and `demand_policy` here,
run by Serve's controller every control period, turns them into a replica count:

    replicas = Σ_routers requests held / autoscaling.target_ongoing_requests

The target's unit is requests (not rows) held per replica, queued or running, as with Ray's own
target_ongoing_requests. A router that shed requests since the last decision shows demand
beyond what it can hold: at least one replica more. Ray then applies min/max_replicas, the
up/downscale delays and factors as for its own policy (a custom policy is wrapped with them).
Each change of its decision is logged (Serve's controller log), with what it saw.

The router (the ingress, which also computes colocated versions) scales on its own load,
`RouterPolicy`: Σ_replicas busy / router.target_busy, where busy is the CPU time a router
replica's process spent per second since its last report (a share of a core; its event loop
is one thread, so about 1 is all it can do). Ray Serve's own count is wrong there: it samples
each replica's ongoing requests at instants on the replica's event loop, and a router answers
a colocated version without yielding, so every sample reads 0 (measured: 0 at 1,500 requests
a second, the router's core saturated); and requests a router holds while a dedicated
version computes cost it nothing (that version scales on them). CPU is what a router runs out
of.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("ray.serve")

#: What a dedicated version's autoscaling_config names as its policy.
POLICY = "serve.ray.autoscale:demand_policy"
#: What the router's autoscaling_config names as its policy (a class: Ray passes it
#: `target_busy` from policy_kwargs).
ROUTER_POLICY = "serve.ray.autoscale:RouterPolicy"
#: The router replicas' report: the share of a core their process used since the last one.
BUSY = "busy"
_SHED = "shed"
_DECISION = "decision"


def demand(metrics: dict[str, dict[Any, float]]) -> tuple[float, dict[str, float]]:
    """The requests every router holds for the version, and each router's shed count, from
    the replicas' reports (a router that reached several replicas counted once: its largest
    report)."""
    held = sum(max(v.values()) for k, v in metrics.items() if k.startswith("demand:") and v)
    shed = {k: max(v.values()) for k, v in metrics.items() if k.startswith("shed:") and v}
    return held, shed


def decide(
    held: float,
    shed: dict[str, float],
    shed_before: dict[str, float],
    current: int,
    target: float,
) -> float:
    """The replicas the demand asks for (unrounded; Ray rounds and bounds it)."""
    desired = held / target
    newly_shed = sum(max(0.0, n - shed_before.get(k, n)) for k, n in shed.items())
    if newly_shed > 0:
        desired = max(desired, current + 1)
    return desired


def bounded(desired: float, low: int, high: int) -> int:
    """The replica count a desire comes to once rounded up and bounded, as Ray does."""
    return min(max(math.ceil(desired), low), high)


def _decision(ctx: Any, desired: float, saw: str) -> int:
    """The bounded decision; logged (with what the policy saw) when it changes."""
    decision = bounded(
        desired, ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
    )
    if decision != ctx.policy_state.get(_DECISION, ctx.target_num_replicas):
        logger.info(
            "modelgate autoscaling %s: %s; %d replicas running, asking for %.2f: %d",
            ctx.deployment_name,
            saw,
            ctx.current_num_replicas,
            desired,
            decision,
        )
    return decision


def demand_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Ray Serve's custom autoscaling policy (`AutoscalingContext` in, replicas and state
    out). Each change of its bounded decision is logged once, with what it saw."""
    held, shed = demand(ctx.aggregated_metrics or {})
    target = ctx.config.get_target_ongoing_requests()
    before = dict(ctx.policy_state.get(_SHED, {}))
    desired = decide(held, shed, before, ctx.current_num_replicas, target)
    newly_shed = sum(max(0.0, n - before.get(k, n)) for k, n in shed.items())
    saw = (
        f"routers hold {held:g} requests (target {target:g} a replica), shed {newly_shed:g} "
        "since the last decision"
    )
    return desired, {_SHED: shed, _DECISION: _decision(ctx, desired, saw)}


class RouterPolicy:
    """Ray Serve's custom autoscaling policy for the router: the cores its replicas kept busy
    (each replica's reports over the look-back period, aggregated by Ray), over the share of a
    core each may use. Each change of its bounded decision is logged once."""

    def __init__(self, target_busy: float) -> None:
        self.target_busy = target_busy

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        busy = sum((ctx.aggregated_metrics or {}).get(BUSY, {}).values())
        desired = busy / self.target_busy
        saw = f"router replicas kept {busy:.2f} cores busy (target {self.target_busy:g} a replica)"
        return desired, {_DECISION: _decision(ctx, desired, saw)}
