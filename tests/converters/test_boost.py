"""LightGBM and XGBoost through onnxmltools, from native model files (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_wine

from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import open_registry

lgb = pytest.importorskip("lightgbm", reason="the boost extra is installed by `make test`")
xgb = pytest.importorskip("xgboost", reason="the boost extra is installed by `make test`")

pytestmark = pytest.mark.boost


def _version_dir(root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    return path


def _sample(path: Path, x: np.ndarray) -> None:
    (path / "sample.json").write_text(json.dumps({"data": x.tolist()}))


@pytest.fixture
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    xc, yc = load_wine(return_X_y=True)
    xr, yr = load_diabetes(return_X_y=True)
    return {"cls": (xc.astype(np.float32), yc), "reg": (xr.astype(np.float32), yr)}


@pytest.mark.parametrize("task", ["cls", "reg"])
def test_lightgbm_native(task: str, data: dict, tmp_path: Path) -> None:
    x, y = data[task]
    cls = lgb.LGBMClassifier if task == "cls" else lgb.LGBMRegressor
    model = cls(n_estimators=20, verbose=-1).fit(x, y)
    path = _version_dir(tmp_path / "models", "lgb")
    model.booster_.save_model(str(path / "model.txt"))
    _sample(path, x[:100])
    result = convert_uri(
        open_registry(str(tmp_path / "models")), "models:/lgb/1", ConvertOptions(out=tmp_path / "a")
    )
    m = result.manifest
    assert m.flavor == "lightgbm" and m.converter["name"] == "onnxmltools"
    assert m.parity is not None and m.parity.rows == 100
    if task == "cls":
        assert m.parity.label_agreement == 1.0 and m.parity.max_abs_diff <= 1e-4
        assert [t.shape for t in m.signature.outputs] == [[-1], [-1, 3]]
    else:
        assert m.task == "regression" and m.parity.max_rel_diff <= 1e-3


@pytest.mark.parametrize("task", ["cls", "reg"])
def test_xgboost_native(task: str, data: dict, tmp_path: Path) -> None:
    x, y = data[task]
    cls = xgb.XGBClassifier if task == "cls" else xgb.XGBRegressor
    model = cls(n_estimators=20, max_depth=3).fit(x, y)
    path = _version_dir(tmp_path / "models", "xgb")
    model.save_model(str(path / "model.json"))
    _sample(path, x[:100])
    result = convert_uri(
        open_registry(str(tmp_path / "models")), "models:/xgb/1", ConvertOptions(out=tmp_path / "a")
    )
    m = result.manifest
    assert m.flavor == "xgboost" and m.parity is not None
    if task == "cls":
        assert m.task == "classification" and m.parity.label_agreement == 1.0
        assert m.parity.max_abs_diff <= 1e-4
    else:
        assert m.task == "regression" and m.parity.max_rel_diff <= 1e-3
