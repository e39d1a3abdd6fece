"""What the integration tests read back from a running gateway: a node exporter's samples, the
delivery controller's decisions, a router's route table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from serve.control.delivery import Store
from serve.ray.internals import KVDirectory
from tests.integration.conftest import Gateway, settle_metrics

Sample = tuple[str, dict[str, str], float]


def samples(port: int) -> list[Sample]:
    """Every sample of the exporter on 127.0.0.1:`port`, from one scrape (once the replicas'
    latest values are written)."""
    from prometheus_client.parser import text_string_to_metric_families

    settle_metrics()
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=60).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(found: list[Sample], name: str, **labels: str) -> float:
    """A series summed over every sample matching `labels`."""
    return sum(
        value
        for sample, have, value in found
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def decisions(app: str, model: str, since: float) -> list[dict[str, Any]]:
    """The delivery controller's decisions about `model` since `since` (wall clock)."""
    return [
        d
        for d in Store(app, KVDirectory()).status().get("decisions", [])
        if d["time"] >= since and d["model"] == model
    ]


def wait_decision(
    app: str, model: str, since: float, outcome: str, what: str, timeout_s: float
) -> dict[str, Any]:
    """The first decision with `outcome` since `since`; fails saying `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in decisions(app, model, since) if e["outcome"] == outcome]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{what}: {decisions(app, model, since)}"
        time.sleep(0.5)


def route_table(gateway: Gateway, prefix: str, model: str) -> dict[str, Any]:
    """`model`'s route table as the router that answers describes it."""
    url = f"{gateway.base}{prefix}/modelgate/routes"
    table: dict[str, Any] = requests.get(url, timeout=5).json()["models"][model]
    return table


def check_drops_strangers(app: str, entry: str, count: int, metrics_port: int) -> None:
    """Each of the `count` listeners published under the direct transport's `entry` of `app`
    binds the node's address only, and a stranger that connects and answers the challenge with
    no proof is dropped unanswered, counted as refused (`reason="proof"`) on the exporter."""
    import socket

    import ray

    from serve.transport.direct import kv_prefix
    from tests.integration.conftest import listening_addresses

    listeners = KVDirectory().listing(kv_prefix(app, entry))
    assert len(listeners) == count, listeners
    node = ray.util.get_node_ip_address()
    refused = "modelgate_direct_refused_total"
    before = total(samples(metrics_port), refused, model="", reason="proof")
    warned = len(replica_warnings("direct port: refused"))
    for address in listeners.values():
        host, port = address.rsplit(":", 1)
        assert host == node and listening_addresses(int(port)) == {node}
        with socket.create_connection((host, int(port)), timeout=10) as stranger:
            stranger.recv(64)  # the challenge
            stranger.sendall(b"\0" * 64)  # no proof: dropped, nothing computed
            stranger.settimeout(10)
            assert stranger.recv(64) == b""
    deadline = time.monotonic() + 60
    while total(samples(metrics_port), refused, model="", reason="proof") < before + count:
        assert time.monotonic() < deadline, "the strangers were not counted"
        time.sleep(0.2)
    # and warned of, where an operator reads a replica's warnings (surface_warnings)
    assert len(replica_warnings("direct port: refused")) >= warned + count


def replica_warnings(text: str) -> list[str]:
    """The replicas' warnings containing `text` so far: each worker's stderr file in this Ray's
    log folder (serve/observe/telemetry.py: surface_warnings)."""
    logs = Path("/tmp/ray/session_latest/logs")
    return [
        f"{path.name}: {line.strip()}"
        for path in sorted(logs.glob("worker-*.err"))
        for line in path.read_text(errors="replace").splitlines()
        if text in line
    ]
