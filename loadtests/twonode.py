"""`make bench`'s two-node scenario: what a network hop between the router and a dedicated
version's replicas costs.

Two Ray nodes on this machine, each in its own network namespace with its own address on a
private bridge (loadtests/netns.py; needs root), started with `ray start` as an operator would.
One gateway, its router on the head node, serving one model version under two names:
  near   its replica on the head node, beside the router (what one node gives)
  far    its replica on the worker node: every batch crosses the bridge over the direct
         transport
Both are the same artifact, batching and transport, deployed once; the load generator (in the
machine's own namespace, reaching the head's ingress over the bridge) alternates between them
at each point, so the ratios compare like with like in the same run.

    sudo .venv/bin/python -m loadtests.twonode [--duration 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from loadtests.netns import (
    BIN,
    Cluster,
    Node,
    alive_nodes,
    ingress_env,
    serve_replicas,
    start_ray,
    wait_for,
)

CLIENTS = (1, 32)
RAY_PORT = 6379
HTTP_PORT = 8000
START_BUDGET_S = 240
#: scenario -> (model name, the label of the node its replica runs on)
SCENARIOS = {"near": ("bc_near", "head"), "far": ("bc_far", "worker")}


def gateway_config(artifact: str) -> dict[str, Any]:
    """The gateway: router on the head, the version's replica where each name says."""

    def model(name: str, role: str) -> dict[str, Any]:
        strict = {"labels": {"role": role}, "fallback": []}
        version = {"artifact": artifact, "placement": "dedicated", "nodes": strict}
        return {"name": name, "versions": [version]}

    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "applications": [
            {
                "name": "modelgate",
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "models": [model(name, role) for name, role in SCENARIOS.values()],
                    "router": {"nodes": {"labels": {"role": "head"}, "fallback": []}},
                    "distribute": "local",
                    "shared_artifacts": True,  # the nodes share this machine's disk
                },
            }
        ],
    }


def _alive(head: Node, address: str) -> int:
    """Ray nodes alive (0 while the head does not answer)."""
    try:
        return len(alive_nodes(head, address))
    except AssertionError:
        return 0


@contextlib.contextmanager
def two_nodes(ingress: str | None = None) -> Iterator[tuple[Cluster, str, str]]:
    """Two Ray nodes (head, worker) labelled by role, each started after `modelgate
    ingress-env` (`--ingress INGRESS` when given); yields the cluster, its address and the
    artifact both nodes see. Everything started is stopped on the way out."""
    from loadtests.bench import prepare_artifact

    workdir = Path("/var/tmp") / f"modelgate-twonode-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(mode=0o700)
    cluster = Cluster(["head", "worker"], workdir)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    logs = Path(tempfile.mkdtemp(prefix="modelgate-twonode-logs-"))
    try:
        # the nodes' /tmp and the repository's .modelgate/ are their own: the artifact goes
        # where both see it
        artifact = shutil.copytree(prepare_artifact(), workdir / "artifact")
        for node in cluster.nodes.values():
            node.env.update(token)
        cluster.start()
        head, worker = cluster.nodes["head"], cluster.nodes["worker"]
        address = f"{head.address}:{RAY_PORT}"
        started = time.monotonic()
        for up, node in enumerate((head, worker), start=1):
            start_ray(
                node, head, logs / f"{node.name}.log", port=RAY_PORT,
                env=ingress_env(node, "/tmp/modelgate-ingress", ingress),
                labels=f"role={node.name}",
            )  # fmt: skip
            wait_for(
                lambda up=up: _alive(head, address) == up,  # type: ignore[misc]
                f"Ray on the {node.name} node",
                START_BUDGET_S - (time.monotonic() - started),
                2,
            )
        yield cluster, address, str(artifact)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def deploy(cluster: Cluster, address: str, config: dict[str, Any]) -> dict[str, set[str]]:
    """`modelgate serve CONFIG --address` from the head; where each deployment's replicas run."""
    head = cluster.nodes["head"]
    path = cluster.workdir / "twonode.yaml"
    path.write_text(yaml.safe_dump(config))
    done = head.run(
        str(BIN / "modelgate"), "serve", str(path), "--address", address, "--no-block",
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return {
        name: {r["node_ip"] for r in replicas}
        for name, replicas in serve_replicas(head, address, "modelgate").items()
    }


def run(duration_s: float, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Start the two nodes, deploy, measure near against far."""
    from loadtests.bench import measure_point, median_point, round_order, show_point
    from loadtests.clients import Target
    from loadtests.runner import load_payloads

    with two_nodes() as (cluster, address, artifact):
        head, worker = cluster.nodes["head"], cluster.nodes["worker"]
        placed = deploy(cluster, address, gateway_config(artifact))
        assert placed["bc_near-v1"] == placed["Router"] == {head.address}, placed
        assert placed["bc_far-v1"] == {worker.address}, placed
        base = f"http://{head.address}:{HTTP_PORT}"
        targets = {}
        for name, (model, _) in SCENARIOS.items():
            target = Target(base, model)
            targets[name] = (target, load_payloads(target, rows=1))
            measure_point(target, targets[name][1], 8, 1.0)  # warm-up, discarded
        samples: dict[str, dict[int, list[dict[str, Any]]]] = {n: {} for n in SCENARIOS}
        for clients in CLIENTS:
            for i in range(rounds):
                for name in round_order(list(SCENARIOS), clients, i):
                    point = measure_point(*targets[name], clients, duration_s)
                    show_point(name, point)
                    samples[name].setdefault(clients, []).append(point)
        return {n: [median_point(samples[n][c]) for c in CLIENTS] for n in SCENARIOS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.twonode")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per point")
    parser.add_argument("--out", type=Path, help="write the points here as JSON")
    args = parser.parse_args(argv)
    results = run(args.duration, args.rounds)
    if args.out is not None:
        args.out.write_text(json.dumps(results))
    from loadtests.bench import table

    print(table({"one-node": results["near"], "two-node": results["far"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
