"""`manifest.json`: what an ONNX artifact is, where it came from, and how it was verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from converters.spec import Signature

EXAMPLE_ROWS = 256
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 3  # 2: FeatureStats.bin_edges / bin_fractions; 3: examples


class ParityReport(BaseModel):
    """How closely the ONNX model reproduced the original on sample rows."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(description="Sample rows both models answered.")
    task: str = Field(description="'classification' or 'regression'.")
    label_agreement: float | None = Field(
        default=None, description="Share of rows whose labels agree (classifiers)."
    )
    max_abs_diff: float = Field(
        description="Largest absolute difference of probabilities (classifiers) or predictions."
    )
    max_rel_diff: float = Field(
        default=0.0, description="Largest relative difference (regressors)."
    )
    tolerance: dict[str, float] = Field(description="The tolerances the check applied.")
    sample_source: str = Field(description="Where the sample rows came from.")


class FeatureStats(BaseModel):
    """Reference statistics of one input feature, for drift checks against live traffic."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    std: float
    quantiles: list[float] = Field(description="Deciles 0.1..0.9 of the sample values.")
    min: float
    max: float
    bin_edges: list[float] = Field(
        default_factory=list,
        description="Distinct deciles, ascending: bin i holds values in (edge[i-1], edge[i]]; "
        "the last bin, values above the last edge.",
    )
    bin_fractions: list[float] = Field(
        default_factory=list,
        description="Share of the sample values in each bin (len(bin_edges) + 1 of them): "
        "the reference distribution input drift is measured against.",
    )


class TensorStats(BaseModel):
    """Per-feature statistics of one numeric input tensor (column j of a [-1, n] tensor)."""

    model_config = ConfigDict(extra="forbid")

    rows: int
    features: list[FeatureStats]


class Manifest(BaseModel):
    """Everything a replica needs to know about an artifact, without loading anything else."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registry version number.")
    source_uri: str = Field(description="Where the model came from, e.g. models:/name/3.")
    registry: str = Field(description="Registry backend and location.")
    flavor: str = Field(description="sklearn, lightgbm, xgboost or onnx.")
    source_sha256: str = Field(description="Digest of the source model's files.")
    sha256: str = Field(description="Digest of model.onnx.")
    signature: Signature
    task: str = Field(description="'classification', 'regression' or 'unknown' (ONNX as is).")
    classes: list[int | str] | None = Field(default=None, description="Class labels, in order.")
    opset: dict[str, int] = Field(description="ONNX opset per domain.")
    converter: dict[str, str] = Field(description="Converter and library versions used.")
    parity: ParityReport | None = Field(default=None, description="None for ONNX passed through.")
    reference_stats: dict[str, TensorStats] = Field(
        default_factory=dict, description="Per numeric input tensor: per-feature statistics."
    )
    examples: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Up to EXAMPLE_ROWS of the sample rows, per input tensor (row i of every "
        "tensor is one input): realistic joint inputs for load tests and demos.",
    )
    created_at: str


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")


def read_manifest(directory: Path) -> Manifest:
    return Manifest.model_validate(json.loads((directory / MANIFEST_FILE).read_text()))
