"""Request payloads for a load test: from the version's manifest, or from a JSONL file.

From a manifest, each numeric feature is drawn from its reference distribution
(serve.client.samples.reference_rows), so the load looks like real inputs. A JSONL file holds one
Open Inference Protocol request per line (`{"inputs": [...]}`, JSON `data`), sent as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.manifest import Manifest, TensorStats
from converters.spec import TensorSpec
from serve.client.samples import binary_request, grpc_request, json_request, reference_rows

POOL = 64  # distinct payloads cycled through


@dataclass
class Payload:
    """One request, pre-encoded for each protocol."""

    json: bytes
    binary: bytes
    binary_headers: dict[str, str]
    grpc: Any  # ModelInferRequest


def from_manifest(
    manifest: Manifest, model: str, version: str | None, rows: int, seed: int = 0
) -> list[Payload]:
    return from_signature(
        manifest.signature.inputs,
        model,
        version,
        rows,
        seed,
        manifest.reference_stats,
        manifest.examples,
    )


def from_signature(
    inputs: list[TensorSpec],
    model: str,
    version: str | None,
    rows: int,
    seed: int = 0,
    stats: dict[str, TensorStats] | None = None,
    examples: dict[str, list[Any]] | None = None,
) -> list[Payload]:
    """Without `stats` and `examples` (a server that publishes only the protocol's metadata):
    N(0, 1) values."""
    rng = np.random.default_rng(seed)
    return [
        _encode(model, version, reference_rows(inputs, rows, rng, stats, examples))
        for _ in range(POOL)
    ]


def from_jsonl(path: Path, model: str, version: str | None) -> list[Payload]:
    from serve.protocol.rest_codec import Limits, decode_request

    payloads = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = decode_request(line.encode(), None, model, version, Limits())
        except Exception as exc:
            raise ValueError(f"{path}:{number}: not an inference request: {exc}") from exc
        payloads.append(_encode(model, version, {t.name: t.array for t in request.inputs}))
    if not payloads:
        raise ValueError(f"{path}: no requests")
    return payloads


def _encode(model: str, version: str | None, rows: dict[str, np.ndarray]) -> Payload:
    body, headers = binary_request(rows)
    return Payload(json_request(rows), body, headers, grpc_request(model, rows, version))


def describe(payloads: list[Payload]) -> dict[str, Any]:
    first = json.loads(payloads[0].json)
    return {
        "distinct": len(payloads),
        "inputs": [{k: t[k] for k in ("name", "shape", "datatype")} for t in first["inputs"]],
    }
