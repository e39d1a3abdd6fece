"""A replica serves an artifact only if its ONNX file is there and matches its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import Registry
from serve.runtime import ArtifactError, VersionRuntime


@pytest.fixture
def artifact(folder_registry: Registry, tmp_path: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    folder_registry.publish_sklearn("iris", LogisticRegression(max_iter=500).fit(x, y), x[:50])
    return convert_uri(folder_registry, "models:/iris/1", ConvertOptions(out=tmp_path / "a")).path


def test_a_sound_artifact_runs(artifact: Path) -> None:
    runtime = VersionRuntime(artifact)
    assert runtime.warm_up()["label"].shape == (1,)


def test_a_tampered_onnx_file_is_refused(artifact: Path) -> None:
    onnx_file = artifact / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\x00")
    with pytest.raises(ArtifactError, match="sha256 does not match the manifest"):
        VersionRuntime(artifact)


def test_a_missing_onnx_file_or_manifest_is_refused(artifact: Path) -> None:
    (artifact / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx is missing"):
        VersionRuntime(artifact)
    (artifact / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"no readable manifest\.json"):
        VersionRuntime(artifact)
