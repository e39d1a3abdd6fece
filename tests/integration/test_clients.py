"""Triton's standard Python clients, unchanged, over HTTP (binary by default) and gRPC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import Gateway

X_BC = load_breast_cancer(return_X_y=True)[0][:8].astype(np.float32)


def test_triton_clients_work_unchanged(gateway: Gateway, tmp_path: Path) -> None:
    x64 = X_BC.astype(np.float64)
    expected = {
        f"v{v}": gateway.originals[f"breast_cancer:{v}"].predict_proba(x64) for v in ("1", "2", "3")
    }
    np.savez(tmp_path / "expected.npz", x=X_BC, **expected)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.triton_checks",
            gateway.base.removeprefix("http://"),
            gateway.grpc,
            str(tmp_path / "expected.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
