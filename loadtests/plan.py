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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests.engine import StepResult

KEEP_UP = 0.95
MAX_LATE = 0.01
#: A probe runs long enough for this many requests (p99 then rests on its 5 worst), within
#: 1 to 4 times the base duration.
MIN_SAMPLES = 500


def probe_duration(rate: float, base_s: float) -> float:
    return min(4 * base_s, max(base_s, MIN_SAMPLES / rate))


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
    for application in patched["applications"]:
        for position, item in enumerate(resolved.get(application["name"], [])):
            model_config, _, _, resolved_version = item
            if model_config.name == model and resolved_version == version:
                args = application["args"]
                entry = _nth_version(args, position)
                if entry.get("placement", "dedicated") == "dedicated":
                    entry.pop("autoscaling", None)
                    entry["num_replicas"] = replicas
                else:
                    router = args.setdefault("router", {})
                    router.pop("autoscaling", None)
                    router["num_replicas"] = replicas
                return patched
    raise ValueError(f"the config deploys no version {version} of model '{model}'")


def _nth_version(args: dict[str, Any], position: int) -> dict[str, Any]:
    entries = [v for m in args["models"] for v in m["versions"]]
    return entries[position]  # type: ignore[no-any-return]
