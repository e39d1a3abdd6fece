"""Run load steps from one generator process, several, or Ray actors on a cluster's nodes.

One asyncio process drives a few thousand requests per second here (`modelgate loadtest
--selftest` measures it); past that, the step is split across generator processes (each takes
its share of the clients or of the rate, all start together) and their HDR histograms are added.
With `ray_address`, the shares run as Ray tasks spread over the cluster's nodes instead.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from converters.manifest import Manifest
from converters.spec import TensorSpec
from loadtests import payload as payloads_
from loadtests.clients import Target, sender
from loadtests.engine import Step, StepResult, run_step
from loadtests.payload import Payload
from serve.client.samples import model_path


def load_payloads(
    target: Target, rows: int = 1, jsonl: Path | None = None, seed: int = 0
) -> list[Payload]:
    """From a JSONL file; else from the version's manifest (reference statistics); else, for a
    server without modelgate's manifest route, from the protocol's model metadata."""
    if jsonl is not None:
        return payloads_.from_jsonl(jsonl, target.model, target.version)
    manifest = fetch_manifest(target)
    if manifest is not None:
        return payloads_.from_manifest(manifest, target.model, target.version, rows, seed)
    metadata = get_json(target.url.rstrip("/") + model_path(target.model, target.version))
    inputs = [TensorSpec.model_validate(t) for t in metadata["inputs"]]
    return payloads_.from_signature(inputs, target.model, target.version, rows, seed)


def fetch_manifest(target: Target) -> Manifest | None:
    """The served version's manifest; None from a server without modelgate's manifest route."""
    path = model_path(target.model, target.version).removeprefix("/v2")
    try:
        return Manifest.model_validate(
            get_json(f"{target.url.rstrip('/')}/modelgate{path}/manifest")
        )
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        return None


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def run(
    target: Target,
    payloads: list[Payload],
    step: Step,
    processes: int = 1,
    ray_address: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> StepResult:
    if processes <= 1 and ray_address is None:
        return asyncio.run(_generate_async(target, payloads, step, None, progress))
    start_at = time.time() + 2.0  # every generator starts together
    shares = [(target, payloads, step.share(i, processes), start_at) for i in range(processes)]
    if ray_address is not None:
        parts = _on_ray(ray_address, shares)
    else:
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(generate, *share) for share in shares]
            parts = _wait(futures, step, progress)
    return StepResult.merge(step, parts)


def generate(target: Target, payloads: list[Payload], step: Step, start_at: float) -> dict:  # type: ignore[type-arg]
    """A generator process's share of a step (a module-level function: it is pickled)."""
    result = asyncio.run(_generate_async(target, payloads, step, start_at, None))
    result.where = socket.gethostname()
    return result.to_wire()


def generate_on_node(target: Target, payloads: list[Payload], step: Step, start_at: float) -> dict:  # type: ignore[type-arg]
    """`generate` as a Ray task: where it ran is its node's address."""
    import ray

    wire = generate(target, payloads, step, start_at)
    wire["where"] = ray.util.get_node_ip_address()
    return wire


async def _generate_async(
    target: Target,
    payloads: list[Payload],
    step: Step,
    start_at: float | None,
    progress: Callable[[float], None] | None,
) -> StepResult:
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    client = sender(target, step.concurrency, step.timeout_s)
    try:
        result = await run_step(client, payloads, step, progress)
        result.answers = dict(client.answers)
        return result
    finally:
        await client.close()


def _wait(futures: list[Any], step: Step, progress: Callable[[float], None] | None) -> list[dict]:  # type: ignore[type-arg]
    total = 2.0 + step.warmup_s + step.duration_s
    started = time.monotonic()
    while not all(f.done() for f in futures):
        if progress is not None:
            progress(min(1.0, (time.monotonic() - started) / total))
        time.sleep(0.5)
    return [f.result() for f in futures]


def _on_ray(address: str, shares: list[tuple[Any, ...]]) -> list[dict]:  # type: ignore[type-arg]
    import ray

    if not ray.is_initialized():
        ray.init(address=address)
    remote = ray.remote(num_cpus=0)(generate_on_node).options(scheduling_strategy="SPREAD")
    return list(ray.get([remote.remote(*share) for share in shares]))
