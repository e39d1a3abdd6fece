"""Capacity planning: the highest rate a deployment sustains under a p99 target, how it scales
with replicas, and the replicas a target rate needs, written back into a deploy config.

The search is over the open-loop rate, bounded in probes: double from `start_rate` while the
step passes, halve while it fails, then bisect between the best pass and the lowest fail until
they are within `tolerance`. A step passes when its p99 (from intended send times) is within
the target, its error ratio within `max_error_ratio`, at most 1% of its sends left late, and
the answers kept up with the offered rate (achieved >= 95% of offered).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests.engine import StepResult

KEEP_UP = 0.95
MAX_LATE = 0.01
#: A probe runs long enough for this many requests (p99 then rests on its 5 worst), within
#: 1 to 4 times the base duration.
MIN_SAMPLES = 500


def probe_duration(rate: float, base_s: float, samples: int | None = None) -> float:
    """Seconds a probe at `rate` runs. A search's: long enough for MIN_SAMPLES requests, within
    1 to 4 times the base duration. A verifying probe's (`samples`): long enough for that many,
    with 4 σ to spare (Poisson arrivals vary)."""
    if samples is None:
        return min(4 * base_s, max(base_s, MIN_SAMPLES / rate))
    return max(base_s, (samples + 4 * math.sqrt(samples)) / rate)


@dataclass(frozen=True)
class Slo:
    p99_ms: float
    max_error_ratio: float = 0.001

    def verdict(self, result: StepResult) -> str | None:
        """None when the step meets the SLO, else why not."""
        p99 = result.percentile_ms(99)
        offered = result.offered_rps
        if result.measured == 0:
            return "no request measured"
        if not p99 <= self.p99_ms:
            return f"p99 {p99:.1f} ms > {self.p99_ms:g} ms"
        if result.error_ratio > self.max_error_ratio:
            return f"errors {result.error_ratio:.2%} > {self.max_error_ratio:.2%}"
        if result.late > MAX_LATE * result.measured:
            return f"{result.late} sends late (all connections busy or generator behind)"
        if offered and result.achieved_rps < KEEP_UP * offered:  # answers fell behind
            return f"achieved {result.achieved_rps:.0f} < {KEEP_UP:.0%} of {offered:.0f} req/s"
        return None


@dataclass
class Search:
    """The probes of one search, and its answer: the highest passing rate (0: none passed)."""

    max_rate: float = 0.0
    best: StepResult | None = None
    probes: list[tuple[float, StepResult, str | None]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_rate": self.max_rate,
            "probes": [
                {"rate": rate, "passed": why is None, "why_not": why, **result.summary()}
                for rate, result, why in self.probes
            ],
        }


def search_max_rate(
    probe: Callable[[float], StepResult],
    slo: Slo,
    start_rate: float,
    max_rate: float,
    tolerance: float = 0.05,
    max_probes: int = 12,
    min_rate: float = 1.0,
) -> Search:
    search = Search()
    low: float | None = None  # highest passing rate
    high: float | None = None  # lowest failing rate
    rate = min(start_rate, max_rate)
    for _ in range(max_probes):
        result = probe(rate)
        why = slo.verdict(result)
        search.probes.append((rate, result, why))
        if why is None:
            low = rate
            if search.best is None or rate > search.best.step.rate:
                search.best = result
        else:
            high = rate
        if low is not None and high is not None:
            if (high - low) / low <= tolerance:
                break
            rate = (low + high) / 2
        elif low is not None:  # only passes so far
            if rate >= max_rate:
                break
            rate = min(rate * 2, max_rate)
        else:  # only fails so far
            if rate / 2 < min_rate:
                break
            rate /= 2
    search.max_rate = low or 0.0
    return search


@dataclass
class Scaling:
    """Measured capacity per replica count, and what a target rate needs."""

    capacity: dict[int, float]

    @property
    def efficiency(self) -> float:
        """What each replica past the first adds, as a share of the first's capacity (1.0 is
        linear); from the 1- and 2-replica measurements, 1.0 when only one was measured."""
        one, two = self.capacity.get(1), self.capacity.get(2)
        if not one or two is None:
            return 1.0
        return max(0.0, min(1.0, (two - one) / one))

    def capacity_at(self, replicas: int) -> float:
        if 1 in self.capacity:
            one = self.capacity[1]
        else:
            fewest = min(self.capacity)
            one = self.capacity[fewest] / fewest
        return one * (1 + (replicas - 1) * self.efficiency)

    @property
    def best(self) -> int:
        """The measured replica count with the most capacity."""
        return max(self.capacity, key=lambda n: self.capacity[n])

    def replicas_for(self, rate: float, headroom: float, ceiling: int = 64) -> int | None:
        """Fewest replicas whose projected capacity covers `rate` plus `headroom` (0.2: 20%);
        None if even `ceiling` replicas would not (scaling too flat)."""
        needed = rate * (1 + headroom)
        for replicas in range(1, ceiling + 1):
            if self.capacity_at(replicas) >= needed:
                return replicas
        return None


def patch_config(
    config: dict[str, Any],
    resolved: dict[str, list[Any]],
    model: str,
    version: str,
    replicas: int,
) -> dict[str, Any]:
    """A copy of a Ray Serve config with the version's replica count set: `num_replicas` of its
    dedicated deployment, or of the router when the version is colocated (autoscaling off: the
    measurement sized it; set autoscaling min_replicas from it to let it grow).

    `resolved`: launcher.preflight's answer for `config` (registry URIs and aliases resolved to
    versions), which lists each application's versions in the config's order.
    """
    patched = copy.deepcopy(config)
    application, entry = _find(patched, resolved, model, version)
    if entry.get("placement", "dedicated") == "dedicated":
        entry.pop("autoscaling", None)
        entry["num_replicas"] = replicas
    else:
        router = application["args"].setdefault("router", {})
        router.pop("autoscaling", None)
        router["num_replicas"] = replicas
    return patched


def version_deployment(
    config: dict[str, Any], resolved: dict[str, list[Any]], model: str, version: str
) -> tuple[str, str]:
    """(application, deployment) whose replicas run the version: its own, or the router."""
    application, entry = _find(config, resolved, model, version)
    if entry.get("placement", "dedicated") == "dedicated":
        return application["name"], f"{model}-v{version}"
    return application["name"], "Router"


def _find(
    config: dict[str, Any], resolved: dict[str, list[Any]], model: str, version: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    for application in config["applications"]:
        for position, item in enumerate(resolved.get(application["name"], [])):
            if item.model.name == model and item.version == version:
                return application, _nth_version(application["args"], position)
    raise ValueError(f"the config deploys no version {version} of model '{model}'")


def _nth_version(args: dict[str, Any], position: int) -> dict[str, Any]:
    entries = [v for m in args["models"] for v in m["versions"]]
    return entries[position]  # type: ignore[no-any-return]


@dataclass
class Plan:
    """A capacity plan, as measured: what `modelgate plan` writes (plan.json, plan.md, plots, and
    a config sized by it)."""

    model: str
    version: str  # the registry version served (an alias resolved)
    target: dict[str, Any]  # where the load went
    slo: Slo
    searches: dict[int, Search]  # by replica count; 0: as deployed
    scaling: Scaling
    sweep: list[dict[str, Any]]  # the closed-loop steps
    target_rate: float
    headroom: float
    deployed: tuple[dict[str, Any], Any] | None = None  # --config and its resolved versions
    verification: dict[str, Any] | None = None  # --verify: the written config, measured
    #: by replica count measured: how many of the version's replicas ran on each node
    placement: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def needed(self) -> int | None:
        """Replicas for the target rate with the headroom; None if adding them cannot reach it."""
        return self.scaling.replicas_for(self.target_rate, self.headroom)

    @property
    def replicas(self) -> int:
        """What the written config deploys: the replicas needed, or the best measured."""
        needed = self.needed
        return needed if needed is not None else self.scaling.best

    def verdict(self) -> str:
        rate, p99_ms = self.target_rate, self.slo.p99_ms
        if self.needed is not None:
            return (
                f"For {rate:.0f} req/s with p99 <= {p99_ms:g} ms and {self.headroom:.0%} "
                f"headroom: **{self.needed} replica(s)**"
            )
        return (
            f"{rate:.0f} req/s with {self.headroom:.0%} headroom is **not reachable by adding "
            f"replicas**: the second replica added {self.scaling.efficiency:.0%} of the first's "
            "capacity, so the limit is elsewhere (router replicas, CPUs, the load generator); the "
            "config keeps the best measured replica count"
        )

    def as_doc(self, machine: dict[str, Any], schema: str) -> dict[str, Any]:
        return {
            "schema": schema,
            "machine": machine,
            "target": {**self.target, "served_version": self.version},
            "slo": {"p99_ms": self.slo.p99_ms, "max_error_ratio": self.slo.max_error_ratio},
            "searches": {
                ("as deployed" if n == 0 else f"{n} replicas"): s.as_dict()
                for n, s in self.searches.items()
            },
            "capacity_rps": self.scaling.capacity,
            "scaling_efficiency": self.scaling.efficiency,
            "target_rate": self.target_rate,
            "headroom": self.headroom,
            "replicas_needed": self.needed,
            "assumptions": [
                "capacity at n replicas = capacity(1) * (1 + (n - 1) * efficiency), efficiency "
                "measured from 1 to 2 replicas (1.0 if only one count was measured)",
                f"the target is met with {self.headroom:.0%} spare capacity",
                "the load looks like this run's: same protocol, rows per request and input values",
                "replicas are counted across the cluster's nodes, wherever Ray placed them "
                "(placement: node address -> replicas)",
                "the load generator shared this machine's CPUs with the gateway unless it ran on "
                "other nodes (--ray-address); the capacities are lower bounds then",
            ],
            "placement": {f"{n} replicas": nodes for n, nodes in self.placement.items()},
            "closed_loop_sweep": self.sweep,
            **({"verification": self.verification} if self.verification is not None else {}),
        }

    def sized_config(self) -> str:
        """The config to deploy: --config with this version's replicas set, or the patch."""
        import yaml

        if self.deployed is not None:
            patched = patch_config(*self.deployed, self.model, self.version, self.replicas)
            return (
                f"# modelgate plan: {self.model} v{self.version} on {self.replicas} replica(s). "
                + self.verdict().replace("**", "")
                + "\n"
                + yaml.safe_dump(patched, sort_keys=False)
            )
        patch = {"model": self.model, "version": self.version, "num_replicas": self.replicas}
        return (
            "# modelgate plan: set this version's num_replicas (or the router's, if colocated)\n"
            + yaml.safe_dump(patch, sort_keys=False)
        )
