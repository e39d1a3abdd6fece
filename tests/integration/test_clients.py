"""Triton's and KServe's standard Python clients, unchanged, over HTTP (binary by default) and
gRPC. Each library runs in a process of its own (their generated `inference.*` messages and
modelgate's share protobuf's default descriptor pool)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import Gateway

X_BC = load_breast_cancer(return_X_y=True)[0][:8].astype(np.float32)


@pytest.mark.parametrize(
    ("module", "http_address"),
    [("triton_checks", lambda base: base.removeprefix("http://")), ("kserve_checks", str)],
    ids=["triton", "kserve"],
)
def test_standard_clients_work_unchanged(
    gateway: Gateway, tmp_path: Path, module: str, http_address: object
) -> None:
    x64 = X_BC.astype(np.float64)
    expected = {
        f"v{v}": gateway.originals[f"breast_cancer:{v}"].predict_proba(x64) for v in ("1", "2", "3")
    }
    np.savez(tmp_path / "expected.npz", x=X_BC, **expected)
    assert callable(http_address)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            f"tests.integration.{module}",
            http_address(gateway.base),
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
