"""One model version in ONNX Runtime: load the artifact (ONNX and manifest only), warm up, run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from converters.artifacts import sha256_file
from converters.manifest import ONNX_FILE, Manifest, read_manifest
from serve.core.errors import ErrorCode, InferenceError
from serve.core.types import Feeds


class ArtifactError(Exception):
    """An artifact that cannot be served: missing, corrupt, or not what its manifest says."""


class VersionRuntime:
    def __init__(
        self, artifact: Path, intra_op_threads: int = 1, verified_sha256: str | None = None
    ) -> None:
        """`verified_sha256`: the digest the caller already checked model.onnx has (the one
        pinned at deploy: serve/core/artifact_cache.py); the file is hashed again only when
        the manifest names another."""
        try:
            self.manifest: Manifest = read_manifest(artifact)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{artifact}: no readable manifest.json: {exc}") from exc
        onnx_path = artifact / ONNX_FILE
        if not onnx_path.is_file():
            raise ArtifactError(f"{artifact}: {ONNX_FILE} is missing")
        if (
            verified_sha256 != self.manifest.sha256
            and sha256_file(onnx_path) != self.manifest.sha256
        ):
            raise ArtifactError(f"{onnx_path}: sha256 does not match the manifest (corrupt?)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The artifact was optimized offline; skip redoing it at every replica start.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Feeds) -> Feeds:
        try:
            values = self.session.run(self.output_names, feeds)
        except Exception as exc:  # ORT raises its own exception types, not exported stably
            raise InferenceError(ErrorCode.INTERNAL, f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self.output_names, values, strict=True))

    def warm_up(self) -> Feeds:
        """One inference on a typical row, so the first real request pays no first-run cost."""
        return self.run(typical_row(self.manifest))


def typical_row(manifest: Manifest) -> Feeds:
    """A one-row input: reference means for numeric inputs, empty strings for BYTES."""
    feeds: Feeds = {}
    for spec in manifest.signature.inputs:
        shape = [1 if d == -1 else d for d in spec.shape]
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
            continue
        array = np.zeros(shape, dtype=spec.numpy_dtype)
        stats = manifest.reference_stats.get(spec.name)
        if stats is not None and len(shape) == 2 and shape[1] == len(stats.features):
            array[0] = [f.mean for f in stats.features]
        feeds[spec.name] = array
    return feeds
