"""Registry round trips: a folder, an embedded MLflow (sqlite), and a real `mlflow server`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from converters.errors import RegistryError, UnsupportedModelError
from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import ModelRef, Registry, open_registry


def _iris_models() -> tuple[object, object, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    first = LogisticRegression(max_iter=500).fit(x, y)
    second = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    return first, second, x[::3]


def _round_trip(registry: Registry, tmp_path: Path) -> None:
    first, second, sample = _iris_models()
    assert registry.publish_sklearn("iris", first, sample) == "1"
    assert registry.publish_sklearn("iris", second, sample) == "2"
    registry.set_alias("iris", "champion", "1")
    registry.set_alias("iris", "challenger", "2")

    [model] = [m for m in registry.list_models() if m.name == "iris"]
    assert [v.version for v in model.versions] == ["1", "2"]
    assert model.aliases == {"champion": "1", "challenger": "2"}
    assert model.versions[1].aliases == ("challenger",)
    assert registry.resolve(ModelRef.parse("models:/iris@challenger")).version == "2"

    fetched = registry.fetch(ModelRef.parse("models:/iris@champion"), tmp_path / "fetch")
    assert (fetched.flavor, fetched.version, fetched.serialization_format) == (
        "sklearn",
        "1",
        "skops",
    )
    assert fetched.sample is not None and len(fetched.sample) == len(sample)

    result = convert_uri(registry, "models:/iris@challenger", ConvertOptions(out=tmp_path / "a"))
    assert result.manifest.version == "2" and result.manifest.source_uri == "models:/iris/2"
    assert result.manifest.parity is not None and result.manifest.parity.rows == len(sample)
    assert result.manifest.classes == [0, 1, 2]

    # Moving an alias moves what it resolves to.
    registry.set_alias("iris", "champion", "2")
    assert registry.resolve(ModelRef.parse("models:/iris@champion")).version == "2"
    with pytest.raises(RegistryError):
        registry.resolve(ModelRef.parse("models:/iris/9"))
    with pytest.raises(RegistryError):
        registry.resolve(ModelRef.parse("models:/iris@nobody"))


def test_folder_registry_round_trip(folder_registry: Registry, tmp_path: Path) -> None:
    _round_trip(folder_registry, tmp_path)


def test_mlflow_sqlite_round_trip(tmp_path: Path) -> None:
    _round_trip(open_registry(f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path)


@pytest.mark.mlflow_server
def test_mlflow_server_round_trip(mlflow_server: str, tmp_path: Path) -> None:
    _round_trip(open_registry(mlflow_server), tmp_path)


def _onnx_in_folder(tmp_path: Path, zipmap: bool) -> Registry:
    from skl2onnx import to_onnx

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    onnx_model = to_onnx(model, x[:1].astype(np.float32), options={"zipmap": zipmap})
    version_dir = tmp_path / "models" / "raw" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(onnx_model.SerializeToString())
    return open_registry(str(tmp_path / "models"))


def test_onnx_with_non_tensor_outputs_is_refused(tmp_path: Path) -> None:
    registry = _onnx_in_folder(tmp_path, zipmap=True)
    with pytest.raises(UnsupportedModelError, match="'output_probability' is a sequence_type, not"):
        convert_uri(registry, "models:/raw/1", ConvertOptions(out=tmp_path / "a"))


def test_folder_registry_onnx_passes_through(tmp_path: Path) -> None:
    registry = _onnx_in_folder(tmp_path, zipmap=False)
    result = convert_uri(registry, "models:/raw/1", ConvertOptions(out=tmp_path / "a"))
    m = result.manifest
    assert m.flavor == "onnx" and m.parity is None and m.task == "unknown"
    assert m.signature.inputs[0].shape == [-1, 4]
    assert all(t.shape[0] == -1 for t in m.signature.outputs)


def test_demo_models_in_embedded_mlflow(demo_registry: Registry, tmp_path: Path) -> None:
    models = {m.name: m for m in demo_registry.list_models()}
    assert set(models) == {"breast_cancer", "iris", "diabetes", "churn"}
    assert len(models["breast_cancer"].versions) == 3
    assert models["breast_cancer"].aliases == {"champion": "1", "challenger": "2"}
    options = ConvertOptions(out=tmp_path / "a")
    for uri in (
        "models:/breast_cancer@champion",
        "models:/breast_cancer@challenger",
        "models:/breast_cancer/3",
        "models:/iris@champion",
        "models:/diabetes@champion",
        "models:/churn@champion",
    ):
        result = convert_uri(demo_registry, uri, options)
        assert result.manifest.parity is not None, uri
        assert (result.path / "model.onnx").is_file()


def test_unknown_registry_entries_are_named(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(RegistryError, match=r"models:/ghost/1 not found in the MLflow registry"):
        convert_uri(registry, "models:/ghost/1", ConvertOptions(out=tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_the_registry_comes_from_the_argument_else_modelgate_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELGATE_REGISTRY", str(tmp_path / "from-env"))
    assert open_registry().location == str(tmp_path / "from-env")
    assert open_registry(str(tmp_path / "given")).location == str(tmp_path / "given")
