"""The parity check: does the ONNX model answer like the original on the same rows?"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from converters.convert import LABEL, PROBABILITIES, VARIABLE, Original
from converters.errors import ParityError
from converters.inputs import PreparedInputs
from converters.manifest import ParityReport


class Tolerance(BaseModel):
    """How far the ONNX model may stray from the original.

    The defaults pass float32 arithmetic (the ONNX models compute in float32) and fail real bugs:
    a wrong feature order or a different model moves probabilities by far more than 1e-4.
    """

    model_config = ConfigDict(extra="forbid")

    min_label_agreement: float = Field(
        default=0.995, ge=0, le=1, description="Least share of rows whose labels must agree."
    )
    prob_atol: float = Field(default=1e-4, ge=0, description="Max abs difference of probabilities.")
    value_atol: float = Field(default=1e-4, ge=0, description="Absolute tolerance (regression).")
    value_rtol: float = Field(default=1e-4, ge=0, description="Relative tolerance (regression).")


def check_parity(
    name: str,
    original: Original,
    session: Any,
    inputs: PreparedInputs,
    tolerance: Tolerance,
    sample_source: str,
) -> ParityReport:
    """Compare and return the figures; raise `ParityError` naming them if off."""
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, inputs.feeds), strict=True)
    )
    if original.task == "classification":
        report = _compare_classifier(original, inputs, outputs, tolerance, sample_source)
        ok = report.label_agreement is not None and (
            report.label_agreement >= tolerance.min_label_agreement
            and report.max_abs_diff <= tolerance.prob_atol
        )
    else:
        report, ok = _compare_regressor(original, inputs, outputs, tolerance, sample_source)
    if not ok:
        raise ParityError(
            f"{name}: the ONNX model does not match the original on {report.rows} rows "
            f"({sample_source}): label agreement {report.label_agreement}, max abs diff "
            f"{report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g}; tolerance "
            f"{tolerance.model_dump()}. No artifact was written."
        )
    return report


def _compare_classifier(
    original: Original,
    inputs: PreparedInputs,
    outputs: dict[str, np.ndarray],
    tolerance: Tolerance,
    sample_source: str,
) -> ParityReport:
    expected = np.asarray(original.predict(inputs.original))
    got = np.asarray(outputs[LABEL]).reshape(-1)
    agreement = float(np.mean(expected.astype(str) == got.astype(str)))
    max_abs = 0.0
    if original.predict_proba is not None and PROBABILITIES in outputs:
        want = np.asarray(original.predict_proba(inputs.original), dtype=np.float64)
        have = np.asarray(outputs[PROBABILITIES], dtype=np.float64)
        max_abs = float(np.max(np.abs(want - have))) if want.shape == have.shape else float("inf")
    return ParityReport(
        rows=inputs.rows,
        task="classification",
        label_agreement=agreement,
        max_abs_diff=max_abs,
        tolerance={
            "min_label_agreement": tolerance.min_label_agreement,
            "prob_atol": tolerance.prob_atol,
        },
        sample_source=sample_source,
    )


def _compare_regressor(
    original: Original,
    inputs: PreparedInputs,
    outputs: dict[str, np.ndarray],
    tolerance: Tolerance,
    sample_source: str,
) -> tuple[ParityReport, bool]:
    want = np.asarray(original.predict(inputs.original), dtype=np.float64).reshape(-1)
    have = np.asarray(outputs[VARIABLE], dtype=np.float64).reshape(-1)
    if want.shape != have.shape:
        diff = np.full(1, np.inf)
        ok = False
    else:
        diff = np.abs(want - have)
        ok = bool(np.all(diff <= tolerance.value_atol + tolerance.value_rtol * np.abs(want)))
    rel = diff / np.maximum(np.abs(want), 1e-12) if want.shape == have.shape else diff
    report = ParityReport(
        rows=inputs.rows,
        task="regression",
        max_abs_diff=float(np.max(diff)),
        max_rel_diff=float(np.max(rel)),
        tolerance={"value_atol": tolerance.value_atol, "value_rtol": tolerance.value_rtol},
        sample_source=sample_source,
    )
    return report, ok
