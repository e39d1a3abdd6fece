"""Every way a conversion can go wrong produces a clear error and leaves nothing behind."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import LabelSpreading

from converters import convert as conv
from converters.artifacts import cached
from converters.errors import (
    ParityError,
    RegistryError,
    UnsupportedModelError,
    UntrustedModelError,
)
from converters.inputs import prepare
from converters.parity import Tolerance, check_parity
from converters.pipeline import ConvertOptions, convert_uri, optimize
from converters.registry import ModelRef, Registry


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return x.astype(np.float32).astype(np.float64), y


def _options(tmp_path: Path, **kw: object) -> ConvertOptions:
    return ConvertOptions(out=tmp_path / "art", **kw)  # type: ignore[arg-type]


def _nothing_written(tmp_path: Path) -> bool:
    root = tmp_path / "art"
    return not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def _session(model: object, x: np.ndarray) -> ort.InferenceSession:
    inputs = prepare(model, x, "m")
    return ort.InferenceSession(optimize(conv.to_onnx(model, inputs)))


def test_wrong_feature_order_fails_parity(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    session = _session(model, x[:50])
    shuffled = prepare(model, x[:200], "m")
    shuffled.feeds["input"] = shuffled.feeds["input"][:, ::-1].copy()
    with pytest.raises(ParityError, match=r"label agreement .*max abs diff .*tolerance"):
        check_parity("models:/m/1", conv.original_of(model), session, shuffled, Tolerance(), "t")


def test_a_different_model_fails_parity(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    converted = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    other = LogisticRegression(max_iter=50).fit(x, y)
    session = _session(converted, x[:50])
    inputs = prepare(other, x[:200], "m")
    with pytest.raises(ParityError, match="models:/m/1"):
        check_parity("models:/m/1", conv.original_of(other), session, inputs, Tolerance(), "t")


def test_float32_noise_passes_tight_tolerance(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    model = LogisticRegression(max_iter=5000).fit(x / x.max(axis=0), y)
    inputs = prepare(model, x[:200] / x.max(axis=0), "m")
    session = ort.InferenceSession(optimize(conv.to_onnx(model, inputs)))
    report = check_parity("m", conv.original_of(model), session, inputs, Tolerance(), "t")
    assert 0 < report.max_abs_diff <= 1e-4  # float32 differs a little, within tolerance


def test_unsupported_estimator(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("spread", LabelSpreading().fit(x[:100], y[:100]), x[:20])
    with pytest.raises(UnsupportedModelError, match=r"LabelSpreading.*Supported: linear models"):
        convert_uri(folder_registry, "models:/spread/1", _options(tmp_path))
    assert _nothing_written(tmp_path)


def test_parity_failure_writes_no_artifact(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("bc", LogisticRegression(max_iter=50).fit(x, y), x[:50])
    impossible = Tolerance(prob_atol=0.0, min_label_agreement=1.0)
    with pytest.raises(ParityError, match="No artifact was written"):
        convert_uri(folder_registry, "models:/bc/1", _options(tmp_path, tolerance=impossible))
    assert _nothing_written(tmp_path)


def test_corrupt_skops_file(folder_registry: Registry, tmp_path: Path) -> None:
    version_dir = Path(folder_registry.location) / "broken" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.skops").write_bytes(b"this is not a zip file")
    with pytest.raises(UnsupportedModelError, match="not a readable skops file"):
        convert_uri(folder_registry, "models:/broken/1", _options(tmp_path))
    assert _nothing_written(tmp_path)


def test_corrupt_onnx_file(folder_registry: Registry, tmp_path: Path) -> None:
    version_dir = Path(folder_registry.location) / "garbage" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(Exception, match="models:/garbage/1: not a valid ONNX model"):
        convert_uri(folder_registry, "models:/garbage/1", _options(tmp_path))
    assert _nothing_written(tmp_path)


def test_missing_model_version_alias(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("bc", LogisticRegression(max_iter=50).fit(x, y), x[:20])
    with pytest.raises(
        RegistryError, match=r"'nope' is not in the folder registry.*models are: bc"
    ):
        convert_uri(folder_registry, "models:/nope/1", _options(tmp_path))
    with pytest.raises(RegistryError, match="no version 7; versions are: 1"):
        convert_uri(folder_registry, "models:/bc/7", _options(tmp_path))
    with pytest.raises(RegistryError, match="no alias 'gold'; aliases are: none"):
        convert_uri(folder_registry, "models:/bc@gold", _options(tmp_path))
    with pytest.raises(RegistryError, match="not of the form models:/<name>/<version>"):
        ModelRef.parse("bc:1")


def test_feature_count_mismatch(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("bc", LogisticRegression(max_iter=50).fit(x, y), x[:20, :29])
    with pytest.raises(
        Exception,
        match="feature-count mismatch: the model takes 30 features, the sample rows have 29",
    ):
        convert_uri(folder_registry, "models:/bc/1", _options(tmp_path))


class Boom:
    """Unpickling this would run code: the test proves the converter never does so unasked."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_pickle_is_refused_unless_trusted(folder_registry: Registry, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    version_dir = Path(folder_registry.location) / "evil" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.pkl").write_bytes(pickle.dumps(Boom(marker)))
    pickle.loads((version_dir / "model.pkl").read_bytes())  # the file does run code when loaded
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UntrustedModelError, match=r"is a pickle.*--trust-pickle"):
        convert_uri(folder_registry, "models:/evil/1", _options(tmp_path))
    assert not marker.exists()


def test_trusted_pickle_loads(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    import joblib

    x, y = data
    version_dir = Path(folder_registry.location) / "legacy" / "1"
    version_dir.mkdir(parents=True)
    joblib.dump(LogisticRegression(max_iter=50).fit(x, y), version_dir / "model.joblib")
    (version_dir / "sample.json").write_text(json.dumps({"data": x[:40].tolist()}))
    result = convert_uri(folder_registry, "models:/legacy/1", _options(tmp_path, trust_pickle=True))
    assert result.manifest.parity is not None and result.manifest.parity.rows == 40


def test_cache_reuses_first_result(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("bc", RandomForestClassifier(n_estimators=5).fit(x, y), x[:30])
    first = convert_uri(folder_registry, "models:/bc/1", _options(tmp_path))
    second = convert_uri(folder_registry, "models:/bc/1", _options(tmp_path))
    assert not first.cached and second.cached
    assert second.path == first.path and second.manifest == first.manifest
    # A tampered artifact is not reused: it is rebuilt.
    (first.path / "model.onnx").write_bytes(b"tampered")
    third = convert_uri(folder_registry, "models:/bc/1", _options(tmp_path))
    assert not third.cached and third.path == first.path
    assert cached(third.path) == third.manifest  # rebuilt whole: file digest matches manifest


def test_generated_sample_when_registry_has_none(
    folder_registry: Registry, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    folder_registry.publish_sklearn("bc", LogisticRegression(max_iter=50).fit(x, y), None)
    result = convert_uri(folder_registry, "models:/bc/1", _options(tmp_path))
    assert result.manifest.parity is not None
    assert "generated" in result.manifest.parity.sample_source
