"""A replica serves an artifact only if its ONNX file is there and matches its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import Registry
from serve.core.runtime import ArtifactError, VersionRuntime


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


def test_a_model_checked_against_its_pin_is_not_hashed_again(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_runtime checks model.onnx against the pinned digest once; the runtime then trusts
    that check only when the manifest names the same digest."""
    from converters.artifacts import sha256_file
    from serve.core import runtime
    from serve.core.artifact_cache import ArtifactRef, open_runtime

    hashed: list[Path] = []
    real = runtime.sha256_file
    monkeypatch.setattr(runtime, "sha256_file", lambda p: hashed.append(p) or real(p))
    ref = ArtifactRef(
        key=f"iris/{artifact.name}",
        sha256=sha256_file(artifact / "model.onnx"),
        manifest_sha256=sha256_file(artifact / "manifest.json"),
        path=str(artifact),
    )
    assert open_runtime(ref).warm_up()["label"].shape == (1,)
    assert hashed == []  # hashed once, by the cache's check against the pin
    VersionRuntime(artifact, verified_sha256="0" * 64)  # a digest the manifest does not name
    assert hashed == [artifact / "model.onnx"]


def test_a_missing_onnx_file_or_manifest_is_refused(artifact: Path) -> None:
    (artifact / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx is missing"):
        VersionRuntime(artifact)
    (artifact / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"no readable manifest\.json"):
        VersionRuntime(artifact)


def test_a_colocated_version_that_cannot_load_is_unavailable_and_the_rest_serve(
    artifact: Path, tmp_path: Path
) -> None:
    """A router replica that starts on a broken colocated artifact still comes up: that version
    answers 503 and is reported UNAVAILABLE, the others serve (tested here without Ray)."""
    import asyncio
    import shutil

    import numpy as np

    from converters.artifacts import sha256_file
    from serve.core.artifact_cache import ArtifactRef
    from serve.core.config import Batching, DriftConfig, MetricsConfig
    from serve.core.dataplane import DataPlane
    from serve.core.errors import ErrorCode, InferenceError
    from serve.core.routing import ModelRouting, RoutingConfig
    from serve.core.types import InferRequest, Tensor
    from serve.ray.app import TelemetrySpec, VersionSpec, _target

    broken = Path(shutil.copytree(artifact, tmp_path / "broken"))
    (broken / "model.onnx").write_bytes(b"garbage")  # after deploy: the pins are the original's

    def pinned(folder: Path) -> ArtifactRef:
        return ArtifactRef(
            key=f"iris/{folder.name}",
            sha256=sha256_file(artifact / "model.onnx"),
            manifest_sha256=sha256_file(artifact / "manifest.json"),
            path=str(folder),
        )

    telemetry = TelemetrySpec(
        metrics=MetricsConfig(port=None, directory=str(tmp_path / "m")),
        drift=DriftConfig(enabled=False),
    ).start()
    targets = [
        _target(
            VersionSpec(
                model="iris",
                version=version,
                artifact=pinned(path),
                placement="colocated",
                batching=Batching(),
                intra_op_threads=1,
                deployment=None,
                timeout_ms=None,
            ),
            {},
            telemetry,
        )
        for version, path in (("1", artifact), ("2", broken))
    ]
    plane = DataPlane.build(targets, {}, telemetry.metrics)
    plane.apply_routing(RoutingConfig(models={"iris": ModelRouting(weights={"1": 1, "2": 1})}))
    assert not targets[1].health.ready and "cannot be loaded" in targets[1].health.reason
    assert plane.repository_index()[1]["state"] == "UNAVAILABLE"
    assert plane.server_ready() and plane.model_ready("iris", "1")
    assert not plane.model_ready("iris", "2")
    spec = targets[0].manifest.signature.inputs[0]
    row = Tensor(spec.name, spec.datatype, np.array([[5.1, 3.5, 1.4, 0.2]], spec.numpy_dtype))

    async def infer(version: str | None) -> str:
        return (await plane.infer(InferRequest("iris", version, [row]))).version

    with pytest.raises(InferenceError) as info:
        asyncio.run(infer("2"))
    assert info.value.code is ErrorCode.UNAVAILABLE and "not ready" in info.value.message
    assert asyncio.run(infer("1")) == "1"
    assert {asyncio.run(infer(None)) for _ in range(20)} == {"1"}  # the split skips version 2
    telemetry.close()
