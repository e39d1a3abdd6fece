"""From a registry URI to a verified ONNX artifact: fetch → load → convert → optimize → check.

`convert_uri` is the whole control-plane path in one place.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from converters import convert as conv
from converters.artifacts import (
    DEFAULT_ARTIFACTS,
    artifact_dir,
    cache_key,
    cached,
    digest_files,
    publish,
)
from converters.errors import ConversionError
from converters.inputs import PreparedInputs, generated_sample, prepare
from converters.loaders import load_model
from converters.manifest import EXAMPLE_ROWS, FORMAT_VERSION, Manifest, ParityReport
from converters.opsets import BOOST_OPSET, SKLEARN_OPSET
from converters.parity import Tolerance, check_parity
from converters.registry import FetchedModel, ModelRef, Registry
from converters.signature import normalize_batch_dim, signature_of
from converters.stats import reference_stats


@dataclass(frozen=True)
class ConvertOptions:
    tolerance: Tolerance = field(default_factory=Tolerance)
    trust_pickle: bool = False
    trusted_types: tuple[str, ...] = ()
    out: Path = DEFAULT_ARTIFACTS


@dataclass(frozen=True)
class ConversionResult:
    manifest: Manifest
    path: Path
    cached: bool


def convert_uri(
    registry: Registry, uri: str, options: ConvertOptions | None = None
) -> ConversionResult:
    options = options or ConvertOptions()
    ref = ModelRef.parse(uri)
    with tempfile.TemporaryDirectory(prefix="modelgate-fetch-") as tmp:
        fetched = registry.fetch(ref, Path(tmp))
        source_sha = digest_files(fetched.files)
        key = cache_key(source_sha, _settings(options))
        directory = artifact_dir(options.out, fetched.name, fetched.version, key)
        hit = cached(directory)
        if hit is not None:
            return ConversionResult(hit, directory, cached=True)
        onnx_bytes, manifest = _convert(registry, fetched, source_sha, options)
    publish(directory, onnx_bytes, manifest)
    return ConversionResult(manifest, directory, cached=False)


def _settings(options: ConvertOptions) -> dict[str, Any]:
    import skl2onnx

    return {
        "manifest_format": FORMAT_VERSION,
        "tolerance": options.tolerance.model_dump(),
        "opsets": {"sklearn": SKLEARN_OPSET, "boost": BOOST_OPSET},
        "skl2onnx": skl2onnx.__version__,
        "onnxruntime": ort.__version__,
    }


def _convert(
    registry: Registry, fetched: FetchedModel, source_sha: str, options: ConvertOptions
) -> tuple[bytes, Manifest]:
    model = load_model(
        fetched, trust_pickle=options.trust_pickle, trusted_types=options.trusted_types
    )
    if fetched.flavor == "onnx":
        return _pass_through(registry, fetched, model, source_sha)
    sample, sample_source = fetched.sample, fetched.sample_source
    if sample is None:
        sample = generated_sample(model, fetched.uri)
        sample_source = f"generated N(0,1) rows ({len(sample)}), no sample in the registry"
    inputs = prepare(model, sample, fetched.uri)
    original = conv.original_of(model)
    proto = conv.to_onnx(model, inputs)
    optimized = optimize(proto)
    session = _session(optimized, fetched.uri)
    parity = check_parity(fetched.uri, original, session, inputs, options.tolerance, sample_source)
    manifest = _manifest(
        registry,
        fetched,
        source_sha,
        optimized,
        inputs,
        opset=_opset(proto),
        task=original.task,
        classes=original.classes,
        parity=parity,
        converter=original.converter,
    )
    return optimized, manifest


def _pass_through(
    registry: Registry, fetched: FetchedModel, raw: bytes, source_sha: str
) -> tuple[bytes, Manifest]:
    try:
        proto = onnx.load_from_string(raw)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ConversionError(f"{fetched.uri}: not a valid ONNX model: {exc}") from exc
    normalize_batch_dim(proto)
    optimized = optimize(proto)
    session = _session(optimized, fetched.uri)
    feeds: dict[str, np.ndarray] = {}
    if fetched.sample is not None and len(session.get_inputs()) == 1:
        feeds = {session.get_inputs()[0].name: np.asarray(fetched.sample, dtype=np.float32)}
        session.run(None, feeds)  # it must at least run on its own sample
    inputs = PreparedInputs("tensor", None, feeds, len(next(iter(feeds.values()), [])))
    manifest = _manifest(
        registry,
        fetched,
        source_sha,
        optimized,
        inputs,
        opset=_opset(proto),
        task="unknown",
        classes=None,
        parity=None,
        converter="passthrough",
    )
    return optimized, manifest


def _opset(proto: onnx.ModelProto) -> dict[str, int]:
    """The opsets the converter targeted (the optimized file lists every domain ORT knows)."""
    return {op.domain or "ai.onnx": op.version for op in proto.opset_import}


def optimize(proto: onnx.ModelProto) -> bytes:
    """Apply ONNX Runtime's graph optimizations offline and return the optimized model."""
    with tempfile.TemporaryDirectory(prefix="modelgate-opt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return out.read_bytes()


def _session(onnx_bytes: bytes, name: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ConversionError(
            f"{name}: ONNX Runtime cannot load the converted model: {exc}"
        ) from exc


def _manifest(
    registry: Registry,
    fetched: FetchedModel,
    source_sha: str,
    onnx_bytes: bytes,
    inputs: PreparedInputs,
    *,
    opset: dict[str, int],
    task: str,
    classes: list[int | str] | None,
    parity: ParityReport | None,
    converter: str,
) -> Manifest:
    import hashlib

    proto = onnx.load_from_string(onnx_bytes)
    return Manifest(
        name=fetched.name,
        version=fetched.version,
        source_uri=fetched.uri,
        registry=registry.location,
        flavor=fetched.flavor,
        source_sha256=source_sha,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        signature=signature_of(proto),
        task=task,
        classes=classes,
        opset=opset,
        converter={"name": converter, **_library_versions()},
        parity=parity,
        reference_stats=reference_stats(inputs.feeds),
        examples={name: _plain(feed[:EXAMPLE_ROWS]) for name, feed in inputs.feeds.items()},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def _plain(values: np.ndarray) -> list[Any]:
    """JSON-ready rows: numbers as they are, bytes as text."""
    if values.dtype.kind in "OSU":
        return [[v.decode() if isinstance(v, bytes) else str(v) for v in row] for row in values]
    return values.tolist()  # type: ignore[no-any-return]


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for dist in (
        "skl2onnx",
        "onnxmltools",
        "onnx",
        "onnxruntime",
        "scikit-learn",
        "lightgbm",
        "xgboost",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions
