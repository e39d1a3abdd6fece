"""Sample predictions against a running gateway, printed by the quickstart and `modelgate serve`.

They use plain HTTP (JSON, and Triton's binary tensor extension) and gRPC, as any client would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from converters.manifest import Manifest, TensorStats
from converters.spec import NUMPY_TO_DATATYPE, TensorSpec
from serve.control.resolve import Resolved
from serve.core.runtime import typical_row


def json_request(rows: dict[str, np.ndarray], **extra: object) -> bytes:
    """An infer request body in JSON."""
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": _datatype(a),
            "data": [x.decode() if isinstance(x, bytes) else x for x in a.reshape(-1).tolist()],
        }
        for n, a in rows.items()
    ]
    return json.dumps({**extra, "inputs": inputs}).encode()


def binary_request(rows: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """An infer request body in Triton's binary tensor extension, and its headers."""
    from serve.core import tensors

    raws = [tensors.to_raw(_datatype(a), a) for a in rows.values()]
    doc = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": _datatype(a),
                "parameters": {"binary_data_size": len(r)},
            }
            for (n, a), r in zip(rows.items(), raws, strict=True)
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(doc).encode()
    headers = {
        "inference-header-content-length": str(len(head)),
        "content-type": "application/octet-stream",
    }
    return head + b"".join(raws), headers


def grpc_request(model: str, rows: dict[str, np.ndarray], version: str | None = None) -> Any:
    """A ModelInferRequest with raw input contents."""
    from serve.core import tensors
    from serve.protos import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model, model_version=version or "")
    for name, array in rows.items():
        request.inputs.add(name=name, datatype=_datatype(array), shape=list(array.shape))
        request.raw_input_contents.append(tensors.to_raw(_datatype(array), array))
    return request


def infer_path(model: str, version: str | None = None) -> str:
    return f"{model_path(model, version)}/infer"


def http_json(
    base: str,
    model: str,
    rows: dict[str, np.ndarray],
    version: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict]:
    status, head, raw = _post(
        base + infer_path(model, version),
        json_request(rows, id="sample"),
        {"content-type": "application/json", **(headers or {})},
    )
    return status, head, json.loads(raw)


def http_binary(
    base: str, model: str, rows: dict[str, np.ndarray], version: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    body, headers = binary_request(rows)
    return _post(base + infer_path(model, version), body, headers)


def grpc_infer(
    target: str, model: str, rows: dict[str, np.ndarray], version: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    import grpc

    from serve.core import tensors
    from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    request = grpc_request(model, rows, version)
    with grpc.insecure_channel(target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    outputs = {
        o.name: tensors.from_raw(o.name, o.datatype, list(o.shape), raw)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    return response.model_version, outputs


def example_rows(manifest: Manifest, rows: int = 1) -> dict[str, np.ndarray]:
    one = typical_row(manifest)
    return {n: np.repeat(a, rows, axis=0) for n, a in one.items()}


def reference_rows(
    inputs: list[TensorSpec],
    rows: int,
    rng: np.random.Generator,
    stats: dict[str, TensorStats] | None = None,
    examples: dict[str, list[Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Rows that look like the training inputs (a manifest's `reference_stats` and `examples`):
    drawn from the example rows (joint, so features keep their relations), else each numeric
    feature from its reference distribution (the inverse of the piecewise-linear CDF through
    min, deciles and max), N(0, 1) without statistics, empty strings for BYTES."""
    if examples and all(examples.get(spec.name) for spec in inputs):
        count = min(len(examples[spec.name]) for spec in inputs)
        picks = rng.integers(0, count, rows)
        return {spec.name: _examples(spec, examples[spec.name], picks) for spec in inputs}
    return {spec.name: _reference_tensor(spec, stats or {}, rows, rng) for spec in inputs}


def _examples(spec: TensorSpec, values: list[Any], picks: np.ndarray) -> np.ndarray:
    if spec.datatype == "BYTES":
        table = np.array([[str(v).encode() for v in row] for row in values], dtype=object)
        return table[picks]
    return np.asarray(values, dtype=spec.numpy_dtype)[picks]


def _reference_tensor(
    spec: TensorSpec, reference: dict[str, TensorStats], rows: int, rng: np.random.Generator
) -> np.ndarray:
    shape = [rows if d == -1 else d for d in spec.shape]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    stats = reference.get(spec.name)
    if stats is None or len(shape) != 2 or shape[1] != len(stats.features):
        return rng.standard_normal(shape).astype(spec.numpy_dtype)
    columns = []
    for feature in stats.features:
        knots = [feature.min, *feature.quantiles, feature.max]
        columns.append(np.interp(rng.random(rows), np.linspace(0, 1, len(knots)), knots))
    return np.stack(columns, axis=1).astype(spec.numpy_dtype)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def model_path(model: str, version: str | None = None) -> str:
    """`/v2/models/{m}[/versions/{v}]`."""
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def _datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    return NUMPY_TO_DATATYPE[array.dtype]


def print_samples(resolved: list[Resolved], base: str, grpc_target: str) -> None:
    """One JSON, one binary and one gRPC prediction per model of a gateway app (as resolved by
    `launcher.preflight`)."""
    from converters.manifest import read_manifest

    seen: set[str] = set()
    print("\nsample predictions:")
    for model, _, artifact, version, _ in resolved:
        if model.name in seen:
            continue
        seen.add(model.name)
        manifest = read_manifest(Path(artifact))
        rows = example_rows(manifest)
        status, headers, doc = http_json(base, model.name, rows)
        answered = headers.get("x-model-version", headers.get("X-Model-Version"))
        print(
            f"  HTTP JSON   POST {base}{model_path(model.name)}/infer -> {status}, "
            f"version {answered}: " + _summary(doc)
        )
        status, headers, _ = http_binary(base, model.name, rows, version)
        head = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
        print(
            f"  HTTP binary POST {base}{model_path(model.name, version)}/infer -> {status} "
            f"({head} bytes of JSON header, raw tensors after)"
        )
        answered, outputs = grpc_infer(grpc_target, model.name, rows)
        print(
            f"  gRPC        ModelInfer({model.name}) at {grpc_target} -> version {answered}: "
            + ", ".join(f"{k}={v.reshape(-1)[:3].tolist()}" for k, v in outputs.items())
        )
        if model.name == "breast_cancer":
            rng = np.random.default_rng(0)
            demo_rows = [
                reference_rows(
                    manifest.signature.inputs, 1, rng, manifest.reference_stats, manifest.examples
                )
                for _ in range(200)
            ]
            print_routing_demo(base, model.name, demo_rows)
    first = next(iter(seen))
    print(
        f"\ntry it:\n  curl -s {base}/v2/models/{first}\n"
        f"  curl -s -X POST {base}/v2/repository/index -d '{{}}'\n"
        f"  .venv/bin/modelgate routes --url {base}"
    )


def _summary(doc: dict[str, Any]) -> str:
    if "outputs" not in doc:
        return json.dumps(doc)
    return ", ".join(f"{o['name']}={o['data'][:3]}" for o in doc["outputs"])


def print_routing_demo(base: str, model: str, rows: list[dict[str, np.ndarray]]) -> None:
    """The canary split, a sticky key and the shadow's comparison, as a client sees them;
    `rows`: one input per request, drawn like the training data (so drift scores stay low)."""
    from collections import Counter

    seen = Counter(http_json(base, model, r)[1].get("x-model-version", "?") for r in rows)
    split = ", ".join(f"v{v}: {n}" for v, n in sorted(seen.items()))
    print(f"  canary split over {len(rows)} requests without a version: {split}")
    sticky = {
        http_json(base, model, r, headers={"x-routing-key": "user-42"})[1].get(
            "x-model-version", "?"
        )
        for r in rows[:5]
    }
    print(f"  x-routing-key: user-42, five times -> version(s) {sorted(sticky)}")
    compared = _scrape(base, "modelgate_shadow_requests_total", model, outcome="compared")
    agreed = _scrape(base, "modelgate_shadow_rows_total", model, agree="true")
    if compared:
        print(
            f"  shadow: {compared:.0f} copies compared so far, labels agreed on {agreed:.0f} "
            f"rows ({base}/metrics, modelgate_shadow_*)"
        )


def _scrape(base: str, name: str, model: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == name
                and sample.labels.get("model") == model
                and all(sample.labels.get(k) == v for k, v in labels.items())
            ):
                total += sample.value
    return total
