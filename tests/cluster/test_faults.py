"""Losing a worker node while traffic flows (tests/cluster): its cable pulled and its processes
killed at once, as a host that dies. Runs after test_cluster.py, on the same cluster, and leaves
the node dead (the cluster is torn down after it).

What must hold: every request is accounted for (answered, or a JSON 503 saying to retry; none
hangs past its timeout, none is lost); failures happen only within a window whose ceiling comes
from the settings the cluster runs with (the GCS's health checks: conftest.HEALTH_CHECK) plus one
request's own timeout; and the version is back to full capacity (its two replicas running again,
on surviving nodes, carrying traffic over the direct transport)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from tests.cluster.conftest import HEALTH_CHECK, HTTP_PORT, RayCluster, replicas, transport_batches
from tests.cluster.netns import wait_for

#: Seconds a load request waits for its answer before it counts as hung.
REQUEST_TIMEOUT_S = 10.0
#: When the GCS declares a silent node dead: THRESHOLD missed checks, each PERIOD apart and
#: each waiting TIMEOUT.
DETECT_S = (
    HEALTH_CHECK["failure_threshold"] * (HEALTH_CHECK["period_ms"] + HEALTH_CHECK["timeout_ms"])
) / 1000
#: No request may fail later than this after the kill.
FAILURE_CEILING_S = DETECT_S + REQUEST_TIMEOUT_S
#: The whole scenario's budget: detection, Serve starting a replacement, traffic on it.
SCENARIO_BUDGET_S = 180


@dataclass
class Outcome:
    sent: float
    done: float
    status: str  # "200", "503", or what went wrong


def _load(base: str, stop: threading.Event, out: list[Outcome]) -> None:
    x = load_breast_cancer(return_X_y=True)[0][:2].astype(np.float32)
    body = {
        "inputs": [
            {"name": "input", "shape": [2, 30], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    with requests.Session() as session:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = session.post(
                    f"{base}/v2/models/breast_cancer/infer", json=body, timeout=REQUEST_TIMEOUT_S
                )
                status = str(response.status_code)
                if status == "503":
                    assert "error" in response.json() and response.headers.get("retry-after")
            except requests.RequestException as exc:
                status = type(exc).__name__
            out.append(Outcome(sent, time.monotonic(), status))


def test_losing_a_worker_node_under_load_loses_no_request(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    base = f"http://{ray_cluster.head.address}:{HTTP_PORT}"
    lost = ray_cluster.workers[0]
    survivor = {n.address for n in ray_cluster.cluster.nodes.values() if n is not lost}
    assert {r["node_ip"] for r in replicas(ray_cluster)["breast_cancer-v1"]} >= {lost.address}
    outcomes: list[Outcome] = []
    stop = threading.Event()
    loaders = [threading.Thread(target=_load, args=(base, stop, outcomes)) for _ in range(4)]
    for loader in loaders:
        loader.start()
    try:
        time.sleep(3)
        killed = time.monotonic()
        lost.unplug()
        lost.kill()

        def back_to_full() -> bool:
            version = replicas(ray_cluster)["breast_cancer-v1"]
            running = [r for r in version if r["state"].endswith("RUNNING")]
            return len(running) == 2 and {r["node_ip"] for r in running} <= survivor

        wait_for(back_to_full, "two replicas running on surviving nodes", SCENARIO_BUDGET_S, 2)
        recovered = time.monotonic()
        direct = transport_batches(base, "direct")
        time.sleep(5)  # the replacements carry traffic over the direct transport
        assert transport_batches(base, "direct") > direct
    finally:
        stop.set()
        for loader in loaders:
            loader.join(timeout=REQUEST_TIMEOUT_S + 5)
    statuses = Counter(o.status for o in outcomes)
    failed = [o for o in outcomes if o.status != "200"]
    window = max((o.done - killed for o in failed), default=0.0)
    print(
        f"requests {len(outcomes)}: {dict(statuses)}; failures within {window:.1f} s of the kill "
        f"(ceiling {FAILURE_CEILING_S:g} s); back to full capacity after "
        f"{recovered - killed:.1f} s"
    )
    assert set(statuses) <= {"200", "503"}, statuses  # nothing hung, nothing dropped
    assert all(o.done - o.sent < REQUEST_TIMEOUT_S for o in outcomes)
    assert window <= FAILURE_CEILING_S
    assert statuses["200"] > 0
