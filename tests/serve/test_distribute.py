"""Artifacts that reach every node without a shared disk (serve/control/distribute.py,
serve/core/artifact_cache.py): published to a real `mlflow server`'s artifact proxy, fetched once
per node into an empty cache, refused when tampered with; local artifacts refused on a cluster."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import Registry
from serve.control import distribute
from serve.control.resolve import ConfigError, Resolved
from serve.core import artifact_cache
from serve.core.artifact_cache import ArtifactRef, local_artifact, local_manifest
from serve.core.config import GatewayConfig
from serve.core.runtime import ArtifactError, VersionRuntime
from tests.conftest import MlflowServer

pytestmark = pytest.mark.mlflow_server


@pytest.fixture
def artifact(folder_registry: Registry, tmp_path: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    folder_registry.publish_sklearn("iris", LogisticRegression(max_iter=500).fit(x, y), x[:50])
    return convert_uri(folder_registry, "models:/iris/1", ConvertOptions(out=tmp_path / "a")).path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "node-cache"
    monkeypatch.setenv(artifact_cache.CACHE_ENV, str(folder))
    return folder


def _config(registry: str, **extra: object) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"registry": registry, "models": [{"name": "iris", "versions": [{"uri": "x"}]}], **extra}
    )


def _resolved(config: GatewayConfig, artifact: Path) -> list[Resolved]:
    model = config.models[0]
    return [Resolved(model, model.versions[0], str(artifact), "1")]


def _published(server: MlflowServer, artifact: Path) -> ArtifactRef:
    config = _config(server)
    [ref] = distribute.pin(config, _resolved(config, artifact))
    return ref


def test_a_published_artifact_reaches_an_empty_node_cache_from_the_server(
    mlflow_server: MlflowServer, artifact: Path, cache: Path
) -> None:
    ref = _published(mlflow_server, artifact)
    assert ref.path is None and ref.url is not None and ref.url.startswith(mlflow_server)
    stored = mlflow_server.artifacts / distribute.ARTIFACT_ROOT / ref.key
    assert {p.name for p in stored.iterdir()} == {"model.onnx", "manifest.json"}
    assert not cache.exists()  # the node has never seen the model
    before = artifact_cache.fetches
    folder = local_artifact(ref)
    assert artifact_cache.fetches == before + 1  # MLflow served it
    assert folder.parent.parent == cache
    for name in ("model.onnx", "manifest.json"):
        assert (folder / name).read_bytes() == (artifact / name).read_bytes()
    assert VersionRuntime(folder).warm_up()["label"].shape == (1,)
    assert local_artifact(ref) == folder and artifact_cache.fetches == before + 1  # cached
    assert local_manifest(ref).sha256 == ref.sha256
    assert distribute.pin(_config(mlflow_server), _resolved(_config(mlflow_server), artifact)) == [
        ref
    ]  # publishing again: the same reference (the server holds it already)


def _fetch_in_a_process(ref_json: str) -> int:
    ref = ArtifactRef.model_validate_json(ref_json)
    local_artifact(ref)
    return artifact_cache.fetches


def test_the_replicas_of_a_node_fetch_it_once_between_them(
    mlflow_server: MlflowServer, artifact: Path, cache: Path
) -> None:
    ref = _published(mlflow_server, artifact)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        fetched = pool.map(_fetch_in_a_process, [ref.model_dump_json()] * 4)
    assert sum(fetched) == 1
    assert [p.name for p in (cache / "iris").iterdir() if not p.name.endswith(".lock")] == [
        Path(ref.key).name
    ]  # no half download left beside it


def test_tampering_with_both_files_on_the_server_is_refused(
    mlflow_server: MlflowServer, artifact: Path, cache: Path
) -> None:
    """The model and its manifest replaced together, consistent with each other: still not
    what was pinned at deploy."""
    ref = _published(mlflow_server, artifact)
    stored = mlflow_server.artifacts / distribute.ARTIFACT_ROOT / ref.key
    onnx = (stored / "model.onnx").read_bytes() + b"\x00"
    (stored / "model.onnx").write_bytes(onnx)
    manifest = json.loads((stored / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(onnx).hexdigest()
    (stored / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="pinned at deploy"):
        local_artifact(ref)
    with pytest.raises(ArtifactError, match="pinned at deploy"):
        local_manifest(ref)
    assert not (cache / ref.key).exists()
    assert [p for p in (cache / "iris").iterdir() if not p.name.endswith(".lock")] == []


def test_a_server_out_of_reach_fails_the_fetch_and_leaves_nothing(
    artifact: Path, cache: Path
) -> None:
    from tests.conftest import free_port

    ref = ArtifactRef(
        key="iris/1-x",
        sha256="0" * 64,
        manifest_sha256="0" * 64,
        url=f"http://127.0.0.1:{free_port()}/gone",
    )
    with pytest.raises(ArtifactError, match="could not fetch"):
        local_artifact(ref)
    assert [p for p in (cache / "iris").iterdir() if not p.name.endswith(".lock")] == []


def test_a_local_artifact_is_read_in_place_and_checked_against_its_pins(
    artifact: Path, cache: Path
) -> None:
    config = _config(str(artifact.parent.parent / "registry"))
    [ref] = distribute.pin(config, _resolved(config, artifact))
    assert (ref.path, ref.url) == (str(artifact), None)
    assert local_artifact(ref) == artifact and not cache.exists()
    (artifact / "model.onnx").write_bytes(b"\x08\x07not a model")
    with pytest.raises(ArtifactError, match=r"model\.onnx has sha256"):
        local_artifact(ref)


def test_local_artifacts_are_refused_on_a_cluster_unless_shared(artifact: Path) -> None:
    config = _config("./models")
    refs = distribute.pin(config, _resolved(config, artifact))
    distribute.check_reachable(config, refs, nodes=1)
    with pytest.raises(ConfigError, match=r"MLflow server as registry.*shared_artifacts: true"):
        distribute.check_reachable(config, refs, nodes=3)
    distribute.check_reachable(_config("./models", shared_artifacts=True), refs, nodes=3)
    with pytest.raises(ConfigError, match="distribute: registry publishes artifacts"):
        distribute.pin(_config("./models", distribute="registry"), _resolved(config, artifact))


def test_published_artifacts_deploy_on_any_number_of_nodes(
    mlflow_server: MlflowServer, artifact: Path
) -> None:
    ref = _published(mlflow_server, artifact)
    distribute.check_reachable(_config(mlflow_server), [ref], nodes=3)


def test_a_default_cache_folder_someone_else_could_write_to_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(artifact_cache.CACHE_ENV, raising=False)
    monkeypatch.setattr(artifact_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"modelgate-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # as a stranger could have made it, before any replica ran
    with pytest.raises(ArtifactError, match="must be this user's own and private"):
        artifact_cache.cache_root()
    shared.chmod(0o700)
    assert artifact_cache.cache_root() == shared / "artifacts"
