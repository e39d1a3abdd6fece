"""The delivery controller: one Ray actor per application that walks each delivering model's
candidate through its policy's steps (serve/core/delivery.py) and rolls it back on a breach.

Where things live (none on a node's disk):
- `delivery/<app>/desired`: each delivering model's policy and resolved versions, written by the
  routers whenever their routing config changes (the operator's desired state);
- `delivery/<app>/records`: each model's phase and step, written by the controller; every router
  reads it each second and routes as its own policy allows for that record (the effective state);
- `delivery/<app>/status`: the last guardrail values and decisions, for `modelgate delivery`;
- `delivery/<app>/command/<model>`: an operator's pause, resume or abort, taken once.
All in Ray's KV (the GCS), which outlives the controller, the routers and their nodes.

The controller is a detached actor named `modelgate-delivery:<app>`, started by the routers when
their config holds a delivery and restarted by Ray if it dies; it resumes each model's step from
its record, with a fresh window. It reads the cluster's totals from every node's exporter (no
Prometheus needed) once a second, and it stops (clearing its keys) once its application is gone.
A router never waits for it: it only reads a key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve.control.follow import Follower
from serve.control.kvstore import KVStore
from serve.core import delivery
from serve.core.delivery import Check, ClusterWindow, DeliveryPolicy, Record
from serve.observe import scrape

logger = logging.getLogger("modelgate.delivery")

#: Seconds between control periods.
INTERVAL_S = 1.0
#: Decisions kept in the status, newest last.
KEEP_DECISIONS = 50
#: Control periods the application must be missing before the controller ends.
GONE_PERIODS = 5
VERBS = ("pause", "resume", "abort")


def actor_name(app: str) -> str:
    return f"modelgate-delivery:{app}"


class Store(KVStore):
    """The delivery's keys in Ray's KV."""

    def __init__(self, app: str, kv: Any) -> None:
        super().__init__(f"delivery/{app}/", kv)

    def _replace(self, name: str, value: dict[str, Any]) -> bool:
        """Writes what the routers publish, unless the store has it already (False)."""
        if self._read(name) == value:
            return False
        self._write(name, value)
        return True

    def desired(self) -> dict[str, Any]:
        return dict(self._read("desired"))

    def publish_desired(self, desired: dict[str, Any]) -> bool:
        """The routers' deliveries: each model's policy and the versions it resolved to."""
        return self._replace("desired", desired)

    def follows(self) -> dict[str, Any]:
        return dict(self._read("follows"))

    def publish_follows(self, follows: dict[str, Any]) -> bool:
        """The models that follow a registry alias, as built."""
        return self._replace("follows", follows)

    def records(self) -> dict[str, Record]:
        return {m: Record.model_validate(r) for m, r in self._read("records").items()}

    def write_records(self, records: dict[str, Record]) -> None:
        self._write("records", {m: r.model_dump() for m, r in records.items()})

    def status(self) -> dict[str, Any]:
        return dict(self._read("status"))

    def write_status(self, status: dict[str, Any]) -> None:
        self._write("status", status)

    def send(self, model: str, verb: str) -> None:
        if verb not in VERBS:
            raise ValueError(f"unknown command {verb!r}: one of {', '.join(VERBS)}")
        self._write(f"command/{model}", {"verb": verb, "at": time.time()})

    def take_commands(self) -> dict[str, str]:
        out = {}
        for key, text in self.kv.listing(self.prefix + "command/").items():
            self.kv.remove(key)
            out[key.rsplit("/", 1)[1]] = json.loads(text)["verb"]
        return out


class _Tracked:
    """One model's delivery as the controller runs it: its record and its step's window."""

    def __init__(self, desired: dict[str, Any], record: Record, now: float) -> None:
        self.desired = desired
        self.policy = DeliveryPolicy.model_validate(desired["policy"])
        self.record = record
        self.window = ClusterWindow()
        self.window_since = now  # monotonic
        self.checks: list[Check] = []
        self.taken = 0.0

    @property
    def pair(self) -> tuple[str, str]:
        return self.desired["stable"], self.desired["candidate"]

    def restart_window(self, now: float) -> None:
        self.window, self.window_since, self.checks, self.taken = ClusterWindow(), now, [], 0.0


Event = dict[str, Any]


class Controller:
    """The control loop's logic: one `tick` a period. Ray-free, so tests can drive it with a
    store and exporters of their own."""

    def __init__(
        self,
        store: Store,
        urls: Callable[[], list[str]],
        fetch: Callable[[str], str | None] = scrape.fetch,
        log: Callable[[Event], None] | None = None,
        metrics: Any = None,  # serve.observe.metrics.DeliveryMetrics
        follower: Follower | None = None,
    ) -> None:
        self.store, self.urls, self.fetch = store, urls, fetch
        self.log = log or (lambda event: None)
        self.metrics = metrics
        self.follower = follower
        self.tracked: dict[str, _Tracked] = {}
        self.decisions: list[Event] = list(store.status().get("decisions", []))

    def tick(self, wall: float, now: float) -> None:
        if self.follower is not None:
            for model, outcome, reason in self.follower.watch(self.store.follows, now):
                self._note(model, outcome, reason, wall)
        desired = self.store.desired()
        records = self.store.records()
        self._follow(desired, records, wall, now)
        commands = self.store.take_commands()
        if any(t.record.phase in ("running", "paused") for t in self.tracked.values()):
            self._observe(now)
        for model, t in self.tracked.items():
            decision = delivery.Decision(t.record)
            if model in commands:
                decision = delivery.command(t.record, commands[model], wall)
            if decision.outcome is None and t.record.phase in ("running", "paused"):
                step_s = now - t.window_since
                decision = delivery.decide(t.policy, t.record, t.checks, t.taken, step_s, wall)
            if decision.outcome is not None:
                self._decided(model, t, decision, wall, now)
        # Records of models no router desires now stay: a router starting publishes before its
        # routing is applied, and the same policy back must resume, not restart.
        new = {m: r for m, r in records.items() if m not in self.tracked}
        new |= {m: t.record for m, t in self.tracked.items()}
        if new != records:
            self.store.write_records(new)
        self._report()

    def _follow(
        self, desired: dict[str, Any], records: dict[str, Record], wall: float, now: float
    ) -> None:
        """Track what the routers desire: a new policy starts a new delivery; a record of the
        same policy (the controller restarted) resumes its step with a fresh window."""
        for model in list(self.tracked):
            if model not in desired or desired[model]["id"] != self.tracked[model].record.id:
                del self.tracked[model]
        for model, d in desired.items():
            if model in self.tracked:
                self.tracked[model].desired = d  # the same delivery; readiness may change
                continue
            record = records.get(model)
            if record is None or record.id != d["id"]:
                record = Record(id=d["id"], since=wall)
                self.tracked[model] = _Tracked(d, record, now)
                self._event(model, self.tracked[model], "started", "a new policy", wall)
            else:
                self.tracked[model] = _Tracked(d, record, now)
                logger.info("%s: resuming delivery %s at step %d", model, d["id"], record.step)

    def _observe(self, now: float) -> None:
        """One scrape of every node's exporter into each running delivery's window; a failed
        scrape leaves the windows as they were (no decision rests on part of the cluster)."""
        pairs = {m: t.pair for m, t in self.tracked.items()}
        texts: dict[str, str] = {}
        for url in self.urls():
            try:
                text = self.fetch(url)
            except scrape.ScrapeError as exc:
                logger.warning("no totals this period: %s", exc)
                return
            if text is not None:
                texts[url] = text
        for url, text in texts.items():
            for model, snap in scrape.snapshots(text, pairs).items():
                self.tracked[model].window.add(url, snap)
        for t in self.tracked.values():
            if t.record.phase not in ("running", "paused"):
                continue
            stable, candidate = t.pair
            live = delivery.share(t.policy, t.record) > 0
            t.checks, t.taken = delivery.judge(
                t.policy.guardrails,
                t.window.growth(),
                stable,
                candidate,
                live=live,
                unready=t.desired.get("candidate_unready", ""),
            )

    def _decided(
        self, model: str, t: _Tracked, decision: delivery.Decision, wall: float, now: float
    ) -> None:
        before = delivery.share(t.policy, t.record)
        t.record = decision.record
        assert decision.outcome is not None
        self._event(model, t, decision.outcome, decision.reason, wall, before)
        if self.metrics is not None:  # the values the decision rests on stay on the dashboard
            self.metrics.checks(model, [(c.name, c.value, c.threshold) for c in t.checks])
        t.restart_window(now)
        if t.record.phase in delivery.FINAL:
            self._ended(model, t, wall)

    def _ended(self, model: str, t: _Tracked, wall: float) -> None:
        """A followed alias follows its delivery's end; a promotion is written back to the
        registry when the policy says so."""
        stable, candidate = t.pair
        follow = t.desired.get("follow")
        if self.follower is None:
            return
        try:
            if follow is not None:
                note = self.follower.ended(model, follow, t.record.phase, stable, candidate)
            elif t.record.phase == "promoted" and t.policy.write_back:
                note = self.follower.write_back(model, t.desired, candidate)
            else:
                return
        except Exception as exc:  # the registry unreachable: said, and the gateway serves on
            logger.warning("%s: registry not updated", model, exc_info=True)
            note = f"the registry could not be updated: {exc}"
        if note:
            self._note(model, "registry", note, wall)

    def _note(self, model: str, outcome: str, reason: str, wall: float) -> None:
        """An event that is not a step of a delivery (the follower's)."""
        event = {"time": wall, "model": model, "outcome": outcome, "reason": reason}
        event |= {"from_percent": 0.0, "candidate_percent": 0.0}
        self.decisions = [*self.decisions, event][-KEEP_DECISIONS:]
        logger.info("%s: %s (%s)", model, outcome, reason)
        self.log(event)
        if self.metrics is not None:
            self.metrics.decisions.labels(model, outcome).inc()

    def _event(
        self,
        model: str,
        t: _Tracked,
        outcome: str,
        reason: str,
        wall: float,
        before: float = 0.0,
    ) -> None:
        """One decision: `from_percent` the candidate's share when it was taken (the step a
        rollback failed in), `candidate_percent` its share after."""
        stable, candidate = t.pair
        event = {
            "time": wall,
            "model": model,
            "delivery": t.record.id,
            "outcome": outcome,
            "phase": t.record.phase,
            "step": t.record.step,
            "from_percent": before,
            "candidate_percent": delivery.share(t.policy, t.record),
            "stable": stable,
            "candidate": candidate,
            "sources": t.desired.get("sources", {}),
            "reason": reason,
            "checks": [c.to_json() for c in t.checks],
        }
        self.decisions = [*self.decisions, event][-KEEP_DECISIONS:]
        logger.info("%s: %s (%s)", model, outcome, reason)
        self.log(event)
        if self.metrics is not None:
            self.metrics.decisions.labels(model, outcome).inc()

    def _report(self) -> None:
        models = {}
        for model, t in self.tracked.items():
            stable, candidate = t.pair
            pct = delivery.share(t.policy, t.record)
            models[model] = {
                **t.record.model_dump(),
                "stable": stable,
                "candidate": candidate,
                "candidate_percent": pct,
                "steps": t.policy.steps,
                "taken": t.taken,
                "min_requests": t.policy.min_requests,
                "checks": [c.to_json() for c in t.checks],
            }
            if self.metrics is not None:
                self.metrics.show(model, t.record.phase, (stable, candidate), pct)
                self.metrics.checks(model, [(c.name, c.value, c.threshold) for c in t.checks])
        self.store.write_status({"models": models, "decisions": self.decisions})


def jsonl(path: Path) -> Callable[[Event], None]:
    def write(event: Event) -> None:
        try:
            with path.open("a") as f:
                f.write(json.dumps(event, sort_keys=True) + "\n")
        except OSError:
            logger.warning("could not write %s", path, exc_info=True)

    return write
