"""Losing a worker node while traffic flows (tests/cluster): its cable pulled and its processes
killed at once, as a host that dies. Runs after test_cluster.py, on the same cluster: first a
worker holding one of the dedicated version's replicas, then (that worker back, as a restarted
host) one holding one of two router replicas. The cluster is torn down after them.

What must hold: every request is accounted for (answered, or a JSON 503 saying to retry; none
hangs past its timeout, none is lost); failures happen only within a window whose ceiling comes
from the settings the cluster runs with (the GCS's health checks: conftest.HEALTH_CHECK) plus one
request's own timeout; and the gateway is back to full capacity: the lost replicas running again
on surviving nodes and carrying traffic (a version's over the direct transport)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer, load_iris

from loadtests.netns import Node, wait_for
from serve.core.config import MetricsConfig
from serve.ingress import haproxy
from tests.cluster.conftest import (
    HEALTH_CHECK,
    HTTP_PORT,
    RayCluster,
    deploy,
    gateway_config,
    replicas,
    start_node,
    transport_batches,
)
from tests.integration.bodies import infer_body

#: Where every node's exporter listens (the gateway's default).
EXPORTER_PORT = MetricsConfig().port

#: Seconds a load request waits for its answer before it counts as hung.
REQUEST_TIMEOUT_S = 10.0
#: When the GCS declares a silent node dead: THRESHOLD missed checks, each PERIOD apart and
#: each waiting TIMEOUT.
DETECT_S = (
    HEALTH_CHECK["failure_threshold"] * (HEALTH_CHECK["period_ms"] + HEALTH_CHECK["timeout_ms"])
) / 1000
#: No request may fail later than this after a node holding model replicas is lost.
FAILURE_CEILING_S = DETECT_S + REQUEST_TIMEOUT_S
#: When HAProxy gives up on a lost router replica's connections (keepalive probes unanswered,
#: or a request's bytes unacknowledged: serve/ingress/haproxy.py).
_IDLE, _INTERVAL, _PROBES = haproxy.SERVER_KEEPALIVE_S
ROUTER_DEAD_S = max(_IDLE + _PROBES * _INTERVAL, haproxy.SERVER_USER_TIMEOUT_S)
#: No request may fail later than this after a router replica's node is lost: what was in flight
#: there ends at ROUTER_DEAD_S, and a request may try the lost router at most twice more (each a
#: connect timeout) before HAProxy's health checks take it out.
ROUTER_CEILING_S = ROUTER_DEAD_S + 2 * haproxy.CONNECT_TIMEOUT_S
#: What a request still unanswered on a router that died gets when HAProxy cannot send it again
#: and it was not the first on its keep-alive connection: the connection closed without an
#: answer (HAProxy 2.8 treats a read error there as a keep-alive race the client retries, and
#: re-sends a request only after a failed connection or a clean close, never a read error).
CLOSED_UNANSWERED = "closed unanswered"
#: The whole scenario's budget: detection, Serve starting a replacement, traffic on it.
SCENARIO_BUDGET_S = 180


@dataclass
class Outcome:
    sent: float
    done: float
    status: str  # "200", "503", or what went wrong


class Load:
    """Clients sending one model's requests through an ingress until stopped; every request's
    outcome is kept."""

    def __init__(self, base: str, model: str, rows: np.ndarray, clients: int = 4) -> None:
        self.url = f"{base}/v2/models/{model}/infer"
        self.body = infer_body(rows)
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(self.url, json=self.body, timeout=REQUEST_TIMEOUT_S)
                    status = str(response.status_code)
                    if status == "503":
                        assert "error" in response.json() and response.headers.get("retry-after")
                    elif status != "200":  # who answered it, for the failure's message
                        status = f"{status} {response.text[:120]!r}"
                except requests.ConnectionError as exc:
                    unanswered = "RemoteDisconnected" in repr(exc)
                    status = CLOSED_UNANSWERED if unanswered else type(exc).__name__
                except requests.RequestException as exc:
                    status = type(exc).__name__
                self.outcomes.append(Outcome(sent, time.monotonic(), status))

    def check(
        self,
        killed: float,
        recovered: float,
        ceiling_s: float,
        unanswered_before: float | None = None,
    ) -> None:
        """Every request accounted for; failures only within `ceiling_s` after `killed`; a
        connection closed unanswered only where `unanswered_before` is given, and only under a
        request sent before `killed` + `unanswered_before` (when the router it was on could not
        be known lost yet)."""
        statuses = Counter(o.status for o in self.outcomes)
        failed = [o for o in self.outcomes if o.status != "200"]
        window = max((o.done - killed for o in failed), default=0.0)
        print(
            f"requests {len(self.outcomes)}: {dict(statuses)}; failures within {window:.1f} s "
            f"of the kill (ceiling {ceiling_s:g} s); back to full capacity after "
            f"{recovered - killed:.1f} s"
        )
        accounted = {"200", "503"}
        if unanswered_before is not None:
            accounted.add(CLOSED_UNANSWERED)
        assert set(statuses) <= accounted, statuses  # nothing hung, nothing dropped
        closed = [o for o in self.outcomes if o.status == CLOSED_UNANSWERED]
        assert all(o.sent - killed <= (unanswered_before or 0) for o in closed), closed
        assert all(o.done - o.sent < REQUEST_TIMEOUT_S for o in self.outcomes)
        assert window <= ceiling_s
        assert statuses["200"] > 0


def _lose(node: Node) -> float:
    """Pull the node's cable and kill it; when."""
    killed = time.monotonic()
    node.unplug()
    node.kill()
    return killed


def _lose_until(node: Node, recovered: Callable[[], bool], what: str) -> tuple[float, float]:
    """With load flowing for 3 s first, lose `node`, then wait until `recovered()` holds (within
    SCENARIO_BUDGET_S); when each happened."""
    time.sleep(3)
    killed = _lose(node)
    wait_for(recovered, what, SCENARIO_BUDGET_S, 2)
    return killed, time.monotonic()


def _running(cluster: RayCluster, deployment: str) -> list[str]:
    """The nodes of a deployment's running replicas."""
    placed = replicas(cluster)[deployment]
    return [r["node_ip"] for r in placed if r["state"].endswith("RUNNING")]


def _served(node: Node, model: str) -> float:
    """Requests for `model` the routers on `node` answered (its node exporter)."""
    text = requests.get(f"http://{node.address}:{EXPORTER_PORT}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modelgate_requests_total{") and f'model="{model}"' in line
    )


def test_losing_a_worker_node_under_load_loses_no_request(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    base = f"http://{ray_cluster.head.address}:{HTTP_PORT}"
    holding = set(_running(ray_cluster, "breast_cancer-v1"))
    lost = next(w for w in ray_cluster.workers if w.alive and w.address in holding)
    survivor = {n.address for n in ray_cluster.cluster.nodes.values() if n is not lost and n.alive}
    rows = load_breast_cancer(return_X_y=True)[0][:2].astype(np.float32)

    def back_to_full() -> bool:
        running = _running(ray_cluster, "breast_cancer-v1")
        return len(running) == 2 and set(running) <= survivor

    with Load(base, "breast_cancer", rows) as load:
        killed, recovered = _lose_until(lost, back_to_full, "two replicas on surviving nodes")
        direct = transport_batches(base, "direct")
        time.sleep(5)  # the replacements carry traffic over the direct transport
        assert transport_batches(base, "direct") > direct
    load.check(killed, recovered, FAILURE_CEILING_S)


def test_losing_a_router_replicas_node_under_load_loses_no_request(
    ray_cluster: RayCluster, deployed: dict[str, Any]
) -> None:
    """Two router replicas, one a node (`nodes.max_per_node: 1`); the worker holding one is
    lost. HAProxy on the head stops sending to it, the other router answers meanwhile, and Serve
    starts the replacement on the node that has none. The worker lost before comes back first
    (a host restarted), so that three nodes can hold the two routers again after the loss."""
    for worker in ray_cluster.workers:
        if not worker.alive:
            ray_cluster.cluster.revive(worker)
            start_node(worker, ray_cluster.head, ray_cluster.logs)
    wait_for(lambda: len(ray_cluster.ray_nodes()) == 3, "three Ray nodes alive", 120, 2)
    config = gateway_config(ray_cluster)
    config["applications"][0]["args"]["router"] = {"num_replicas": 2, "nodes": {"max_per_node": 1}}
    deploy(ray_cluster, config, "routers.yaml")
    wait_for(lambda: len(_running(ray_cluster, "Router")) == 2, "two routers", 120, 2)
    placed = _running(ray_cluster, "Router")
    assert len(set(placed)) == 2  # one a node
    lost = next(w for w in ray_cluster.workers if w.address in placed)
    survivors = [n for n in ray_cluster.cluster.nodes.values() if n is not lost and n.alive]
    base = f"http://{ray_cluster.head.address}:{HTTP_PORT}"
    rows = load_iris(return_X_y=True)[0][:2].astype(np.float32)

    def back_to_full() -> bool:
        nodes = _running(ray_cluster, "Router")
        alive = {n.address for n in survivors}
        return len(nodes) == 2 and len(set(nodes)) == 2 and set(nodes) <= alive

    with Load(base, "iris", rows) as load:
        killed, recovered = _lose_until(lost, back_to_full, "two routers on surviving nodes")
        routers = [n for n in survivors if n.address in _running(ray_cluster, "Router")]
        served = {n.name: _served(n, "iris") for n in routers}
        time.sleep(5)  # both routers carry traffic, the replacement too
        assert all(_served(n, "iris") > served[n.name] for n in routers), served
    load.check(killed, recovered, ROUTER_CEILING_S, unanswered_before=ROUTER_DEAD_S)
