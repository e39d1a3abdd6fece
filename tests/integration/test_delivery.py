"""Progressive delivery on a real gateway (serve/core/delivery.py, serve/control/delivery.py):
open-loop traffic from the load-test harness, the controller reading the node exporter, the
router following its records. One good candidate walks every step to promotion (paused and
resumed by the CLI, its controller killed on the way); three bad ones, each faulty by what its
ONNX graph computes, are rolled back with the default guardrails before they take more than
the share of the step they failed in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families

from serve.control.delivery import Store, actor_name
from serve.ray.app import ROUTER_REFRESH_S
from serve.ray.internals import KVDirectory, session_dir
from tests.integration.canary_models import ERROR_ABOVE, canary_artifacts
from tests.integration.conftest import Gateway, deploy_beside, replica_pids, restore
from tests.integration.traffic import Traffic

APP, PREFIX, MODEL = "delivery", "/delivery", "canary"
VERSIONS = {"stable": "1", "good": "2", "erroring": "3", "slow": "4", "disagreeing": "5"}
#: Steps and their bounds are the test's (short); every guardrail threshold is the default.
MIN_REQUESTS = 40
POLICY: dict[str, Any] = {
    "stable": "champion",
    "steps": [0, 5, 25, 50],
    "min_step_s": 2,
    "min_requests": MIN_REQUESTS,
    "shadow_ratio": 0.1,
}
#: A delivery that has not ended by then is a failure (the good one needs ~100 requests at 5%:
#: under 15 s at this rate; the steps' minimum times add 8 s).
DEADLINE_S = 90


def app_config(
    artifacts: dict[str, Path],
    delivery: dict[str, Any] | None,
    router: dict[str, Any] | None = None,
) -> dict[str, Any]:
    routing: dict[str, Any] = {"aliases": {"champion": "1"}}
    if delivery is not None:
        routing["delivery"] = delivery
    else:  # the operator's routing before any delivery: the stable version takes everything
        routing["weights"] = {"champion": 1}
    versions = [
        {
            "artifact": str(artifacts[kind]),
            # the slow one on replicas of its own, so that it is slow on its own
            "placement": "dedicated" if kind == "slow" else "colocated",
        }
        for kind in VERSIONS
    ]
    return {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "deployments": [{"name": "Router", "user_config": {"models": {MODEL: routing}}}],
        "args": {"models": [{"name": MODEL, "versions": versions}]}
        | ({} if router is None else {"router": router}),
    }


@pytest.fixture(scope="module")
def artifacts(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:  # type: ignore[type-arg]
    found = canary_artifacts(tmp_path_factory.mktemp("canary"))
    deploy_beside(gateway, app_config(found, None))
    try:
        yield found
    finally:
        restore(gateway)
        _controller_gone()


def _controller_gone(timeout_s: float = 30) -> None:
    """The controller ends by itself once its application is gone (and clears its keys)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(actor_name(APP), namespace="modelgate")
        except ValueError:
            break
        assert time.monotonic() < deadline, "the delivery controller outlived its application"
        time.sleep(0.5)
    assert Store(APP, KVDirectory()).status() == {}


class Routes:
    """The router's routing in force, sampled every 50 ms: (time, weights, shadow version)."""

    def __init__(self, gateway: Gateway) -> None:
        self.url = f"{gateway.base}{PREFIX}/modelgate/routes"
        self.samples: list[tuple[float, dict[str, float], str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Routes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            table = requests.get(self.url, timeout=5).json()["models"][MODEL]
            shadow = table["shadow"]["version"] if table["shadow"] else None
            self.samples.append((time.time(), table["weights"], shadow))

    def first_at(self, since: float, weights: dict[str, float]) -> float:
        return next(t for t, w, s in self.samples if t >= since and w == weights and s is None)


def routed(gateway: Gateway, weights: dict[str, float]) -> dict[str, Any]:
    """The router's table once it routes by `weights`: within a few of its reads of the
    records."""
    deadline = time.monotonic() + 5 * ROUTER_REFRESH_S
    while True:
        url = f"{gateway.base}{PREFIX}/modelgate/routes"
        table: dict[str, Any] = requests.get(url, timeout=5).json()["models"][MODEL]
        if table["weights"] == weights:
            return table
        assert time.monotonic() < deadline, table
        time.sleep(0.1)


def requests_by_version(gateway: Gateway) -> Counter[str]:
    """The model's requests per version, every outcome, from the node exporter."""
    text = requests.get(gateway.metrics, timeout=10).text
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "modelgate_requests_total" and sample.labels["model"] == MODEL:
                out[sample.labels["version"]] += int(sample.value)
    return out


def deploy(gateway: Gateway, artifacts: dict[str, Path], candidate: str) -> None:
    deploy_beside(gateway, app_config(artifacts, {**POLICY, "candidate": candidate}))


def status() -> dict[str, Any]:
    return Store(APP, KVDirectory()).status()


def wait_for(predicate: Any, what: str, timeout_s: float = DEADLINE_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        s = status().get("models", {}).get(MODEL)
        if s is not None and predicate(s):
            return s
        assert time.monotonic() < deadline, f"{what}: {json.dumps(s, indent=1)}"
        time.sleep(0.2)


def decisions(since: float) -> list[dict[str, Any]]:
    return [d for d in status().get("decisions", []) if d["time"] >= since]


def cli(*args: str, returncode: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "serve.cli", "delivery", *args, "--app", APP],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == returncode, done.stdout + done.stderr
    return done.stdout


def test_a_good_candidate_walks_every_step_to_promotion_paused_resumed_and_restarted(
    gateway: Gateway, artifacts: dict[str, Path]
) -> None:
    candidate = VERSIONS["good"]
    before = requests_by_version(gateway)
    started = time.time()
    with Traffic(gateway, PREFIX, MODEL) as traffic:
        deploy(gateway, artifacts, candidate)
        wait_for(lambda s: s["candidate"] == candidate and s["step"] == 1, "reach 5%")
        # paused by the operator: it holds 5% while requests pass what the step needs
        assert "pause sent" in cli("pause", MODEL)
        paused = wait_for(lambda s: s["phase"] == "paused", "pause")
        wait_for(lambda s: s["taken"] >= 2 * MIN_REQUESTS, "traffic while paused")
        assert status()["models"][MODEL]["step"] == paused["step"] == 1
        text = cli("status")
        assert f"{MODEL}: v1 -> v{candidate}  paused  candidate 5%" in text
        assert "error_ratio" in text and "p99_ratio" in text
        cli("resume", MODEL)
        wait_for(lambda s: s["phase"] == "running" and s["step"] >= 2, "resume to 25%")
        # the operator deploys the same config again: the delivery goes on where it was
        deploy(gateway, artifacts, candidate)
        # the controller killed mid-delivery: Ray restarts it, it resumes the step it was in
        step = status()["models"][MODEL]["step"]
        ray.kill(ray.get_actor(actor_name(APP), namespace="modelgate"), no_restart=False)
        # and the router replaced (a rolling restart: its options changed): the new one routes
        # by the record it reads
        routers = replica_pids(APP, "Router")
        changed = app_config(
            artifacts, {**POLICY, "candidate": candidate}, {"max_ongoing_requests": 4000}
        )
        deploy_beside(gateway, changed)
        assert not set(replica_pids(APP, "Router")) & set(routers)
        final = wait_for(lambda s: s["phase"] == "promoted", "promotion")
    timeline = [d for d in decisions(started) if d["model"] == MODEL]
    print(
        "good: "
        + ", ".join(
            f"{d['outcome']} {d['candidate_percent']:g}% at {d['time'] - started:.1f} s"
            for d in timeline
        )
    )
    outcomes = [d["outcome"] for d in timeline]
    assert outcomes == ["started", "advanced", "paused", "resumed", *["advanced"] * 2, "promoted"]
    # the same decisions in the JSONL log, with the versions' sources (the controller ran here)
    log = Path(session_dir()) / f"modelgate-delivery-{APP}.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [e for e in logged if e["model"] == MODEL and e["time"] >= started]
    assert [e["outcome"] for e in mine] == outcomes
    assert mine[-1]["sources"] == {v: f"models:/{MODEL}/{v}" for v in ("1", candidate)}
    assert final["step"] >= step
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()  # nothing failed on the way
    # promoted: the candidate takes the default route and the stable alias names it, once the
    # router has read the record (it reads them every ROUTER_REFRESH_S)
    table = routed(gateway, {candidate: 1.0})
    assert table["aliases"]["champion"] == candidate
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.1] * 30}]
    }
    url = f"{gateway.base}{PREFIX}/v2/models/{MODEL}/versions/champion/infer"
    assert requests.post(url, json=body, timeout=10).json()["model_version"] == candidate
    taken = requests_by_version(gateway) - before
    assert taken[candidate] > 0 and taken[VERSIONS["stable"]] > 0
    # a promoted delivery stays so: the operator is told, nothing is sent
    said = cli("abort", MODEL, returncode=1)
    assert f"the delivery of {MODEL} is promoted" in said


@pytest.mark.parametrize(
    ("kind", "guardrail"),
    [
        ("erroring", "error_ratio"),
        ("slow", "p99_ratio"),
        ("disagreeing", "label_agreement"),
    ],
)
def test_a_bad_candidate_is_rolled_back_within_the_share_of_the_step_it_failed_in(
    gateway: Gateway, artifacts: dict[str, Path], kind: str, guardrail: str
) -> None:
    candidate = VERSIONS[kind]
    with Traffic(gateway, PREFIX, MODEL) as traffic, Routes(gateway) as routes:
        if kind == "erroring":  # some of the harness's rows must be ones it fails on
            rows = [json.loads(p.json)["inputs"][0]["data"][0] for p in traffic.payloads]
            assert any(x > ERROR_ABOVE for x in rows)
        before = requests_by_version(gateway)
        started = time.time()
        deploy(gateway, artifacts, candidate)
        final = wait_for(
            lambda s: s["candidate"] == candidate and s["phase"] == "failed", "rollback"
        )
        rolled_back = next(d for d in decisions(started) if d["outcome"] == "rolled_back")
        time.sleep(2)  # traffic on after the rollback: none of it reaches the candidate
        applied = routes.first_at(rolled_back["time"], {VERSIONS["stable"]: 1.0})
        taken = requests_by_version(gateway) - before
    assert guardrail in final["reason"], final["reason"]
    share = taken[candidate] / sum(taken.values())
    failed_at = rolled_back["from_percent"]
    print(
        f"{kind}: rolled back at {failed_at:g}% ({final['reason']}); the candidate took "
        f"{taken[candidate]} of {sum(taken.values())} requests; routers on the stable version "
        f"{applied - rolled_back['time']:.2f} s after the decision"
    )
    assert share <= failed_at / 100, (share, taken)
    if kind == "disagreeing":  # caught while shadowed: no live request ever reached it
        assert failed_at == 0 and taken[candidate] == 0
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()


def test_a_candidate_whose_replicas_cannot_start_is_rolled_back_saying_why(
    gateway: Gateway, artifacts: dict[str, Path]
) -> None:
    """The dedicated version's model file breaks and its replica dies: the replacement refuses
    the artifact and the routers give it no traffic. Delivered, it fails at once with their
    reason rather than waiting for requests that cannot come. (Last in the module: the
    artifact stays broken.)"""
    candidate = VERSIONS["slow"]
    (artifacts["slow"] / "model.onnx").write_bytes(b"\x08\x07not an onnx model")
    for pid in replica_pids(APP, f"{MODEL}-v{candidate}"):
        os.kill(pid, signal.SIGKILL)
    index = f"{gateway.base}{PREFIX}/v2/repository/index"
    deadline = time.monotonic() + 90
    while True:
        rows = requests.post(index, json={}, timeout=10).json()
        states = {r["version"]: r["state"] for r in rows if r["name"] == MODEL}
        if states[candidate] == "UNAVAILABLE":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    with Traffic(gateway, PREFIX, MODEL) as traffic:
        since = time.time()
        # the same args (no rebuild, which would refuse the broken artifact): a new policy,
        # applied in place, to an application that is not healthy
        config = app_config(artifacts, {**POLICY, "candidate": candidate})
        deploy_beside(gateway, config, preflight=False, wait=False)
        final = wait_for(
            lambda s: s["candidate"] == candidate and s["phase"] == "failed", "rollback"
        )
    assert "candidate_ready" in final["reason"] and "no running replica" in final["reason"]
    outcomes = [d["outcome"] for d in decisions(since) if d["model"] == MODEL]
    assert outcomes == ["started", "rolled_back"]
    routed(gateway, {VERSIONS["stable"]: 1.0})
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()
