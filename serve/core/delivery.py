"""Progressive delivery: a candidate version earns a model's traffic step by step, judged by its
own metrics against the stable version's, and loses it at once on a breach.

The operator's routing config holds the *policy* (`models.<m>.delivery`, the desired state); the
delivery controller (serve/control/delivery.py) keeps a *record* per model (phase and step, the
effective state) in Ray's KV; every router derives the model's routing from its own policy and
that record (`effective_routing`), so no routing the policy does not allow is ever set:

    shadow step (0%): stable takes every request; the candidate answers copies, compared
    live steps (5%, 25%, …): the candidate takes that share of the default route
    promoted: the candidate takes all of it, and the stable alias names it
    failed / aborted: the stable version takes all of it

This module is the pure part: the policy, the guardrails judged on a window of counters, and the
decision of one control period. No Ray, no clock of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Request outcomes that are the version's failures: the caller got no answer. A client's own
#: errors (4xx: bad input, unknown version, auth) are not the version's and do not count.
FAILED = ("internal", "unavailable", "deadline_exceeded", "overloaded")

Phase = Literal["running", "paused", "failed", "aborted", "promoted"]
#: Phases that end a delivery: the routing stays as they left it until the policy changes.
FINAL = ("failed", "aborted", "promoted")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Guardrails(_Strict):
    """Judged on the candidate against the stable version, over the current step's window (from
    the step's start, or the controller's restart, to now). Each limit is on a share: of
    requests that failed, of rows whose labels disagree, of requests above a latency or a
    difference (a p99 over a limit is more than 1% of requests above it). Once `min_samples`
    stand behind it, a guardrail **breaches** when the share seen is beyond what a candidate
    within the limit gives by chance (one-sided binomial test at `false_alarm`), **holds** when
    the share seen is within the limit, and is **pending** in between: over the limit on too
    few requests to tell (a step neither advances nor fails on it; more requests decide it). So
    a handful of slow or failed requests in a small window, which a good candidate meets on a
    busy host too, holds a step rather than fail it; a real fault is beyond chance within a few
    requests."""

    max_error_ratio: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Most of the candidate's requests that may fail: answered 500, 503 "
        "(unavailable, or shed because its queue was full or its latency target missed) or 504 "
        "(deadline missed); a shadow copy that fails counts too. A caller's own errors (4xx) "
        "do not count.",
    )
    max_error_ratio_over_stable: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Most the candidate's error ratio may exceed the stable version's in the "
        "same window (live steps).",
    )
    max_p99_ratio: float = Field(
        1.5,
        gt=1,
        description="The candidate's p99 latency (router time, live steps) at most this many "
        "times the stable version's, the latter taken as at least `min_latency_ms`.",
    )
    min_latency_ms: float = Field(
        10.0,
        ge=0,
        description="Stable p99s below this are compared as this: below it, a p99 on a busy "
        "host is scheduling jitter rather than the model.",
    )
    min_latency_samples: int = Field(
        100,
        ge=1,
        description="The stable version's requests in the window before its p99 draws the "
        "line, and the candidate's before its p99 can hold (a p99 of fewer is its maximum); "
        "a candidate beyond chance above the line breaches on fewer.",
    )
    min_label_agreement: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Shadow step, classifiers: share of compared rows whose labels agree.",
    )
    max_abs_diff: float | None = Field(
        None,
        gt=0,
        description="Shadow step: p99 of each compared request's max abs difference between "
        "the answers (probabilities, or regression outputs in their units). null: not judged "
        "(set it for regressors: no default fits every output's scale).",
    )
    max_input_drift: float | None = Field(
        0.25,
        gt=0,
        description="Largest population stability index of the candidate's inputs against its "
        "own reference (any feature; serve/observe/drift.py) while it also exceeds the stable "
        "version's by `max_input_drift_over_stable`: the traffic is not what the candidate was "
        "trained for, though it is what the stable version was. (Traffic that drifted from "
        "both is the drift dashboards' alarm, not a reason to prefer either.) null: not judged.",
    )
    max_input_drift_over_stable: float = Field(
        0.1,
        ge=0,
        description="How far the candidate's drift may exceed the stable version's (the width "
        "of PSI's 'moderate' band): a margin for the noise of two windows of the same traffic.",
    )
    min_samples: int = Field(
        20,
        ge=1,
        description="Requests (or compared copies) behind a ratio before it is judged.",
    )
    false_alarm: float = Field(
        1e-4,
        gt=0,
        lt=0.5,
        description="Chance that one judgement breaches a guardrail a candidate within its "
        "limit meets: the binomial test's level (its Chernoff bound, so the chance is lower). "
        "Smaller waits for more requests before a rollback; larger rolls back on less.",
    )


class DeliveryPolicy(_Strict):
    """`models.<m>.delivery` in the Router's user_config: how a candidate takes over."""

    candidate: str | None = Field(
        None,
        description="The version taking over: a deployed version or alias. Left out when the "
        "model follows a registry alias: the follower names the version the alias moved to.",
    )
    stable: str | None = Field(
        None,
        description="The version serving now: a deployed version or alias (when an alias, "
        "promotion moves it to the candidate). Left out when the model follows an alias: the "
        "alias.",
    )
    steps: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 25.0, 50.0],
        min_length=1,
        description="The candidate's share of the default route at each step, in percent, "
        "increasing; 0: shadow only (it answers copies of the stable version's requests, "
        "compared, and takes no live traffic). After the last step holds: promotion (100%).",
    )
    min_step_s: float = Field(30.0, ge=0, description="Least seconds a step lasts.")
    min_requests: int = Field(
        200,
        ge=1,
        description="Least requests the candidate must take in a step (compared copies in the "
        "shadow step) before it advances.",
    )
    shadow_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Shadow step: share of the model's requests copied to the candidate (copies "
        "never delay an answer: over the shadow's in-flight cap they are dropped).",
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)
    write_back: bool = Field(
        False,
        description="On promotion, move the stable alias to the candidate in the registry too "
        "(both named by the registry: `stable` an alias, the candidate a registry version). A "
        "followed alias needs none: the registry moved it first, and a rollback puts it back.",
    )

    @model_validator(mode="after")
    def _valid(self) -> DeliveryPolicy:
        steps = self.steps
        if any(not 0 <= s < 100 for s in steps):
            raise ValueError(
                f"steps: each must be in [0, 100); 100 is the promotion, after the last: {steps}"
            )
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase: {steps}")
        if self.min_requests < self.guardrails.min_samples:
            raise ValueError(
                f"min_requests ({self.min_requests}) must be at least guardrails.min_samples "
                f"({self.guardrails.min_samples}): a step must not advance unjudged"
            )
        return self

    def identity(self, stable: str, candidate: str) -> str:
        """Names one delivery: the policy and the versions its names resolved to. The same
        config deployed again is the same delivery; any change starts a new one."""
        text = json.dumps([self.model_dump(mode="json"), stable, candidate], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the record the controller keeps ------------------------------------------------------------
class Record(_Strict):
    """One model's delivery as the controller left it (Ray's KV holds it, JSON)."""

    id: str
    phase: Phase = "running"
    step: int = 0
    reason: str = ""
    since: float = 0.0  # wall time the step (or the final phase) began


def share(policy: DeliveryPolicy, record: Record | None) -> float:
    """The candidate's share of the default route, in percent, for this record (none: the
    delivery has not started, and the stable version keeps everything)."""
    if record is None or record.phase in ("failed", "aborted"):
        return 0.0
    if record.phase == "promoted":
        return 100.0
    return policy.steps[min(record.step, len(policy.steps) - 1)]


def shadowing(policy: DeliveryPolicy, record: Record | None) -> bool:
    return (
        record is not None
        and record.phase in ("running", "paused")
        and policy.steps[min(record.step, len(policy.steps) - 1)] == 0
    )


# -- the window ---------------------------------------------------------------------------------
#: A snapshot of cumulative counters (and a few gauges), flat: key -> value. Keys:
#: ("req", version, code), ("lat", version, le), ("shadow", outcome), ("agree", "true"|"false"),
#: ("diff", le), and the gauge ("drift", version).
Snapshot = dict[tuple[str, ...], float]


def _gauge(key: tuple[str, ...]) -> bool:
    return key[0] == "drift"


class ClusterWindow:
    """Counters' growth across the nodes since the window began, robust to a node's exporter
    that stops answering (its growth so far is kept), restarts from zero (its growth before the
    reset is carried), or appears mid-window (only what it gains from then on counts)."""

    def __init__(self) -> None:
        self._base: dict[str, Snapshot] = {}
        self._last: dict[str, Snapshot] = {}
        self._carried: Snapshot = {}

    def add(self, node: str, now: Snapshot) -> None:
        last = self._last.get(node)
        if last is None:
            self._base[node] = now
        elif any(now.get(k, 0.0) < v - 1e-9 for k, v in last.items() if not _gauge(k)):
            for key, value in _growth(last, self._base[node]).items():
                self._carried[key] = self._carried.get(key, 0.0) + value
            self._base[node] = {}
        self._last[node] = now

    def growth(self) -> Snapshot:
        out = dict(self._carried)
        for node, last in self._last.items():
            for key, value in _growth(last, self._base[node]).items():
                out[key] = out.get(key, 0.0) + value
            for key in filter(_gauge, last):
                out[key] = max(out.get(key, 0.0), last[key])
        return out


def _growth(now: Snapshot, start: Snapshot) -> Snapshot:
    return {k: v - start.get(k, 0.0) for k, v in now.items() if not _gauge(k)}


@dataclass
class VersionCounts:
    requests: float = 0.0  # answered or failed by the version (its callers' errors excluded)
    failed: float = 0.0
    latency: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative count)

    @property
    def error_ratio(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


def counts(w: Snapshot, version: str) -> VersionCounts:
    out = VersionCounts()
    buckets: dict[float, float] = {}
    for key, value in w.items():
        if key[0] == "req" and key[1] == version:
            if key[2] == "ok":
                out.requests += value
            elif key[2] in FAILED:
                out.requests += value
                out.failed += value
        elif key[0] == "lat" and key[1] == version:
            le = float(key[2])
            buckets[le] = buckets.get(le, 0.0) + value
    out.latency = sorted(buckets.items())
    return out


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket (cumulative counts by le)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


@dataclass
class Check:
    """One guardrail's verdict: `ok` None while too few samples stand behind it."""

    name: str
    value: float | None
    threshold: float
    ok: bool | None
    detail: str = ""

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        state = {True: "holds", False: "BREACH", None: "pending"}[self.ok]
        return f"{self.name} {value} (limit {self.threshold:.4g}) {state}" + (
            f": {self.detail}" if self.detail else ""
        )

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "ok": self.ok,
            "detail": self.detail,
        }


def judge(
    g: Guardrails, w: Snapshot, stable: str, candidate: str, *, live: bool, unready: str = ""
) -> tuple[list[Check], float]:
    """Every guardrail on the window, and the candidate's requests in it (live requests on a
    live step, compared copies on the shadow step). `unready`: why the routers give the
    candidate no traffic (its replicas failed to start, or all stopped): a breach."""
    s, c = counts(w, stable), counts(w, candidate)
    shadow_ok = w.get(("shadow", "compared"), 0.0)
    shadow_failed = w.get(("shadow", "error"), 0.0)
    tried = c.requests + shadow_ok + shadow_failed
    failed = c.failed + shadow_failed
    checks = [
        Check(
            "error_ratio",
            failed / tried if tried else None,
            g.max_error_ratio,
            verdict(g, failed, tried, g.max_error_ratio),
            f"{failed:.0f} of {tried:.0f} failed",
        )
    ]
    if live:
        over = c.error_ratio - s.error_ratio
        limit = min(1.0, s.error_ratio + g.max_error_ratio_over_stable)
        checks.append(
            Check(
                "error_ratio_over_stable",
                over if c.requests and s.requests else None,
                g.max_error_ratio_over_stable,
                None if s.requests < g.min_samples else verdict(g, c.failed, c.requests, limit),
                f"candidate {c.error_ratio:.4f}, stable {s.error_ratio:.4f}",
            )
        )
        checks.append(_latency(g, s, c))
    agree, disagree = w.get(("agree", "true"), 0.0), w.get(("agree", "false"), 0.0)
    rows = agree + disagree
    if rows:
        checks.append(
            Check(
                "label_agreement",
                agree / rows,
                g.min_label_agreement,
                verdict(g, disagree, rows, 1 - g.min_label_agreement),
                f"{agree:.0f} of {rows:.0f} rows",
            )
        )
    diffs = sorted((float(k[1]), v) for k, v in w.items() if k[0] == "diff")
    if g.max_abs_diff is not None and diffs:
        compared = diffs[-1][1]
        apart = above(g.max_abs_diff, diffs)
        checks.append(
            Check(
                "max_abs_diff_p99",
                quantile(0.99, diffs),
                g.max_abs_diff,
                verdict(g, apart, compared, TAIL),
                f"{apart:.0f} of {compared:.0f} compared above it",
            )
        )
    if unready:
        checks.append(Check("candidate_ready", 0.0, 1.0, False, unready))
    drift = w.get(("drift", candidate))
    if g.max_input_drift is not None and drift:  # 0 until the drift window has its rows
        base = w.get(("drift", stable), 0.0)
        ok = drift <= g.max_input_drift or drift - base <= g.max_input_drift_over_stable
        checks.append(Check("input_drift", drift, g.max_input_drift, ok, f"stable's {base:.4g}"))
    return checks, c.requests if live else shadow_ok


#: The share of requests above a p99.
TAIL = 0.01


def beyond_chance(k: float, n: float, share: float, false_alarm: float) -> bool:
    """Whether `k` or more of `n` is less likely than `false_alarm` when each is one with
    probability `share`: the binomial's upper tail, bounded by Chernoff's
    exp(-n KL(k/n || share)), which needs no table and holds for any n."""
    if n <= 0 or k <= share * n:
        return False
    if share <= 0:
        return True
    q = min(k / n, 1.0)
    kl = q * math.log(q / share)
    if q < 1:
        kl += (1 - q) * math.log((1 - q) / (1 - share))
    return n * kl >= math.log(1 / false_alarm)


def verdict(g: Guardrails, k: float, n: float, share: float, hold_from: int = 0) -> bool | None:
    """A guardrail on a share (at most `share` of `n` may be `k`): breached when the share seen
    is beyond chance, holding when it is within the limit (on at least `hold_from` samples),
    else pending; never judged on fewer than `min_samples`."""
    if n < g.min_samples:
        return None
    if beyond_chance(k, n, share, g.false_alarm):
        return False
    if k <= share * n and n >= hold_from:
        return True
    return None


def above(x: float, cumulative: list[tuple[float, float]]) -> float:
    """How many of a histogram's samples lie above `x` (linear within the bucket, as
    `quantile`; everything in the +Inf bucket is above)."""
    if not cumulative:
        return 0.0
    total = cumulative[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if x <= le:
            if math.isinf(le) or le == lower_le:
                return total - lower_count
            return total - (lower_count + (count - lower_count) * (x - lower_le) / (le - lower_le))
        lower_le, lower_count = le, count
    return total - lower_count


def _latency(g: Guardrails, s: VersionCounts, c: VersionCounts) -> Check:
    """The candidate's p99 against `max_p99_ratio` times the stable version's (at least the
    floor): breached when more of the candidate's requests lie above that line than a p99
    within it gives by chance; holding once its own p99 is within it on `min_latency_samples`."""
    n_s = s.latency[-1][1] if s.latency else 0.0
    n_c = c.latency[-1][1] if c.latency else 0.0
    p_s, p_c = quantile(0.99, s.latency), quantile(0.99, c.latency)
    if p_s is None or p_c is None or n_s < g.min_latency_samples:
        return Check("p99_ratio", None, g.max_p99_ratio, None, f"{n_c:.0f} candidate samples")
    base = max(p_s, g.min_latency_ms / 1000)
    line = g.max_p99_ratio * base
    slow = above(line, c.latency)
    return Check(
        "p99_ratio",
        p_c / base,
        g.max_p99_ratio,
        verdict(g, slow, n_c, TAIL, hold_from=g.min_latency_samples),
        f"candidate {p_c * 1000:.1f} ms, stable {p_s * 1000:.1f} ms; {slow:.0f} of the "
        f"candidate's {n_c:.0f} above {line * 1000:.1f} ms",
    )


# -- one control period --------------------------------------------------------------------------
@dataclass
class Decision:
    record: Record
    outcome: str | None = None  # started, advanced, promoted, rolled_back, paused, resumed, aborted
    reason: str = ""


def decide(
    policy: DeliveryPolicy,
    record: Record,
    checks: list[Check],
    taken: float,
    step_s: float,
    now: float,
) -> Decision:
    """What one control period does with a running or paused delivery: roll back on any breach
    (paused ones too), else advance once the step has lasted, carried enough requests, and
    every guardrail that applies has been judged."""
    if record.phase not in ("running", "paused"):
        return Decision(record)
    breaches = [c for c in checks if c.ok is False]
    if breaches:
        reason = "; ".join(c.describe() for c in breaches)
        return Decision(_to(record, "failed", reason, now), "rolled_back", reason)
    if record.phase == "paused" or step_s < policy.min_step_s or taken < policy.min_requests:
        return Decision(record)
    if any(c.ok is None for c in checks):  # a guardrail not yet judged holds nothing
        return Decision(record)
    held = f"step {share(policy, record):g}% held {step_s:.0f} s over {taken:.0f} requests"
    if record.step + 1 >= len(policy.steps):
        return Decision(_to(record, "promoted", held, now), "promoted", held)
    advanced = record.model_copy(update={"step": record.step + 1, "since": now, "reason": held})
    return Decision(advanced, "advanced", held)


def command(record: Record, verb: str, now: float) -> Decision:
    """An operator's pause, resume or abort; a final delivery stays as it is."""
    if record.phase in FINAL:
        return Decision(record)
    if verb == "pause" and record.phase == "running":
        return Decision(record.model_copy(update={"phase": "paused"}), "paused", "operator")
    if verb == "resume" and record.phase == "paused":
        return Decision(record.model_copy(update={"phase": "running"}), "resumed", "operator")
    if verb == "abort":
        return Decision(_to(record, "aborted", "operator", now), "aborted", "operator")
    return Decision(record)


def _to(record: Record, phase: Phase, reason: str, now: float) -> Record:
    return record.model_copy(update={"phase": phase, "reason": reason, "since": now})


# -- what a router applies -----------------------------------------------------------------------
@dataclass
class Resolved:
    """A policy's names resolved against one model's deployed versions and aliases."""

    stable: str
    candidate: str
    stable_alias: str | None  # the alias that names the stable version, moved by promotion


def resolve(
    policy: DeliveryPolicy, versions: list[str], aliases: Mapping[str, str], model: str
) -> Resolved:
    def one(field_name: str, name: str | None) -> str:
        if name is None:
            raise ValueError(
                f"model '{model}': delivery.{field_name} is required (it may be left out only "
                "when a version of the model follows a registry alias)"
            )
        version = aliases.get(name, name)
        if version not in versions:
            raise ValueError(
                f"model '{model}': delivery.{field_name} '{name}' is neither a deployed version "
                f"({', '.join(versions)}) nor an alias"
            )
        return version

    stable, candidate = one("stable", policy.stable), one("candidate", policy.candidate)
    stable_alias = policy.stable if policy.stable in aliases else None
    return Resolved(stable, candidate, stable_alias)


def routes(
    policy: DeliveryPolicy, names: Resolved, record: Record | None
) -> tuple[dict[str, float], str | None, dict[str, str]]:
    """(weights, shadowed version or None, alias overrides) for the record's state."""
    if names.stable == names.candidate:  # nothing to deliver: the registry already agrees
        return {names.stable: 1.0}, None, {}
    pct = share(policy, record)
    if pct >= 100:
        moved = {names.stable_alias: names.candidate} if names.stable_alias else {}
        return {names.candidate: 1.0}, None, moved
    weights = {names.stable: 100.0 - pct} | ({names.candidate: pct} if pct > 0 else {})
    return weights, names.candidate if shadowing(policy, record) else None, {}
