"""The `modelgate` CLI, run as a user runs it: a real process, a real embedded registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from converters.registry import Registry


def _modelgate(*args: str, cwd: Path, registry: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELGATE_REGISTRY": registry}
    return subprocess.run(
        [sys.executable, "-m", "serve.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_convert_and_models(demo_registry: Registry, tmp_path: Path) -> None:
    done = _modelgate(
        "convert", "models:/breast_cancer@champion", cwd=tmp_path, registry=demo_registry.location
    )
    assert done.returncode == 0, done.stderr
    assert (
        "models:/breast_cancer/1 (sklearn, classification) -> .modelgate/artifacts/"
        "breast_cancer/1-" in done.stdout
    )
    assert (
        "parity on 200 rows (MLflow input_example (200 rows)): label agreement 1.0000"
        in done.stdout
    )

    listing = _modelgate("models", cwd=tmp_path, registry=demo_registry.location)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "breast_cancer" in lines and "churn" in lines and "iris" in lines
    assert any(
        line.startswith("  1 @champion  onnx: .modelgate/artifacts/breast_cancer/1-")
        for line in lines
    )
    assert "  2 @challenger  onnx: -" in lines


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/breast_cancer/99", "models:/breast_cancer/99 not found in the MLflow registry"),
        ("breast_cancer", "is not of the form models:/<name>/<version>"),
    ],
)
def test_convert_errors_exit_2_with_a_message(
    demo_registry: Registry, tmp_path: Path, uri: str, message: str
) -> None:
    done = _modelgate("convert", uri, cwd=tmp_path, registry=demo_registry.location)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
