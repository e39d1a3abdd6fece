"""Every supported estimator family converts, and its ONNX twin answers like the original."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn import datasets, ensemble, linear_model, neighbors, svm, tree
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from converters.demo import churn_frame
from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import Registry
from serve.client.samples import reference_rows


def _classification() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_breast_cancer(return_X_y=True)
    return x.astype(np.float32).astype(np.float64), y


def _multiclass() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_wine(return_X_y=True)
    return x.astype(np.float32).astype(np.float64), y


def _regression() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_diabetes(return_X_y=True)
    return x.astype(np.float32).astype(np.float64), y


CLASSIFIERS = {
    "logistic": make_pipeline(StandardScaler(), linear_model.LogisticRegression(max_iter=500)),
    "decision_tree": tree.DecisionTreeClassifier(max_depth=6, random_state=0),
    "random_forest": ensemble.RandomForestClassifier(n_estimators=20, random_state=0),
    "extra_trees": ensemble.ExtraTreesClassifier(n_estimators=20, random_state=0),
    "gradient_boosting": ensemble.GradientBoostingClassifier(n_estimators=30, random_state=0),
    "hist_gradient_boosting": ensemble.HistGradientBoostingClassifier(max_iter=30),
    "svc": make_pipeline(StandardScaler(), svm.SVC(probability=True, random_state=0)),
    "knn": make_pipeline(MinMaxScaler(), neighbors.KNeighborsClassifier(n_neighbors=5)),
}

REGRESSORS = {
    "linear": linear_model.LinearRegression(),
    "ridge": make_pipeline(StandardScaler(), linear_model.Ridge()),
    "random_forest": ensemble.RandomForestRegressor(n_estimators=20, random_state=0),
    "gradient_boosting": ensemble.GradientBoostingRegressor(n_estimators=30, random_state=0),
    "hist_gradient_boosting": ensemble.HistGradientBoostingRegressor(max_iter=30),
    "svr": make_pipeline(StandardScaler(), svm.SVR()),
    "knn": neighbors.KNeighborsRegressor(n_neighbors=5),
}


def _convert(registry: Registry, tmp_path: Path, name: str, model: Any, sample: Any):
    version = registry.publish_sklearn(name, model, sample)
    return convert_uri(registry, f"models:/{name}/{version}", ConvertOptions(out=tmp_path / "art"))


def _run(result: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(result.path / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_classifier_family(family: str, folder_registry: Registry, tmp_path: Path) -> None:
    x, y = _multiclass() if family in ("decision_tree", "knn") else _classification()
    model = CLASSIFIERS[family].fit(x, y)
    result = _convert(folder_registry, tmp_path, family, model, x[:150])

    m = result.manifest
    assert m.task == "classification"
    assert m.parity is not None and m.parity.label_agreement == 1.0
    assert m.parity.max_abs_diff <= 1e-4
    assert [t.name for t in m.signature.outputs] == ["label", "probabilities"]
    assert m.signature.inputs[0].datatype == "FP32"
    assert m.signature.inputs[0].shape == [-1, x.shape[1]]
    # The artifact on disk answers like the original on rows the check did not see.
    rows = x[-60:].astype(np.float32)
    out = _run(result, {"input": rows})
    np.testing.assert_array_equal(out["label"], model.predict(rows.astype(np.float64)))
    np.testing.assert_allclose(
        out["probabilities"], model.predict_proba(rows.astype(np.float64)), atol=1e-4
    )


@pytest.mark.parametrize("family", sorted(REGRESSORS))
def test_regressor_family(family: str, folder_registry: Registry, tmp_path: Path) -> None:
    x, y = _regression()
    model = REGRESSORS[family].fit(x, y)
    result = _convert(folder_registry, tmp_path, family, model, x[:150])

    m = result.manifest
    assert m.task == "regression"
    assert m.parity is not None and m.parity.max_rel_diff <= 1e-3
    assert [t.name for t in m.signature.outputs] == ["variable"]
    rows = x[-60:].astype(np.float32)
    out = _run(result, {"input": rows})
    np.testing.assert_allclose(
        out["variable"].reshape(-1), model.predict(rows.astype(np.float64)), rtol=1e-3, atol=1e-3
    )


def test_mixed_type_column_transformer(folder_registry: Registry, tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame, y = churn_frame(600, seed=1)
    model = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["age", "monthly_spend"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
                    ]
                ),
            ),
            ("clf", ensemble.RandomForestClassifier(n_estimators=10, random_state=0)),
        ]
    ).fit(frame, y)
    result = _convert(folder_registry, tmp_path, "churn", model, frame.iloc[:100])

    m = result.manifest
    assert {t.name: t.datatype for t in m.signature.inputs} == {
        "age": "FP32",
        "monthly_spend": "FP32",
        "city": "BYTES",
        "plan": "BYTES",
    }
    assert m.parity is not None and m.parity.label_agreement == 1.0
    assert set(m.reference_stats) == {"age", "monthly_spend"}  # numeric inputs only
    tail = frame.iloc[-50:]
    feeds = {
        "age": tail["age"].to_numpy(np.float32).reshape(-1, 1),
        "monthly_spend": tail["monthly_spend"].to_numpy(np.float32).reshape(-1, 1),
        "city": tail["city"].to_numpy(object).reshape(-1, 1),
        "plan": tail["plan"].to_numpy(object).reshape(-1, 1),
    }
    expected = model.predict(tail.astype({"age": np.float32, "monthly_spend": np.float32}))
    np.testing.assert_array_equal(_run(result, feeds)["label"], expected)
    # example rows keep each row's columns together, strings included
    assert len(m.examples["city"]) == 100
    assert m.examples["city"][3] == [frame["city"].iloc[3]]
    drawn = reference_rows(m.signature.inputs, 20, np.random.default_rng(0), None, m.examples)
    assert drawn["city"].dtype == object and drawn["age"].shape == (20, 1)
    np.testing.assert_array_equal(_run(result, drawn)["label"].shape, (20,))


def test_manifest_records_provenance(folder_registry: Registry, tmp_path: Path) -> None:
    import hashlib

    x, y = _classification()
    model = ensemble.RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    result = _convert(folder_registry, tmp_path, "bc", model, x[:100])
    m = result.manifest
    onnx_bytes = (result.path / "model.onnx").read_bytes()
    assert m.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert m.source_uri == "models:/bc/1" and m.version == "1" and m.flavor == "sklearn"
    assert m.opset["ai.onnx"] <= 17 and "ai.onnx.ml" in m.opset
    assert {"skl2onnx", "onnxruntime", "scikit-learn"} <= set(m.converter)
    stats = m.reference_stats["input"]
    assert stats.rows == 100 and len(stats.features) == x.shape[1]
    first = x[:100, 0]
    assert stats.features[0].mean == pytest.approx(first.mean(), rel=1e-5)
    assert stats.features[0].quantiles[4] == pytest.approx(np.quantile(first, 0.5), rel=1e-5)
    assert m.classes == [0, 1]
    assert np.asarray(m.examples["input"]).shape == (100, x.shape[1])
    assert m.examples["input"][7] == x[7].astype(np.float32).tolist()
