"""The MLflow Model Registry backend: a sqlite file (the embedded default) or an MLflow server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from converters.errors import RegistryError
from converters.registry import FetchedModel, ModelInfo, ModelRef, Registry, VersionInfo

EXPERIMENT = "modelgate"
KNOWN_FLAVORS = ("onnx", "xgboost", "lightgbm", "sklearn")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RegistryError(
            "the MLflow registry needs the mlflow extra: pip install 'modelgate[mlflow]'"
        ) from exc
    return mlflow


class MlflowRegistry(Registry):
    def __init__(self, uri: str) -> None:
        self.location = uri
        mlflow = _mlflow()
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def list_models(self) -> list[ModelInfo]:
        return [self._model_info(m) for m in self._client.search_registered_models()]

    def resolve(self, ref: ModelRef) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            if ref.alias is not None:
                mv = self._client.get_model_version_by_alias(ref.name, ref.alias)
            else:
                mv = self._client.get_model_version(ref.name, str(ref.version))
        except MlflowException as exc:
            raise RegistryError(
                f"{ref} not found in the MLflow registry at {self.location}: {exc.message}"
            ) from exc
        return VersionInfo(ref.name, str(mv.version), tuple(mv.aliases or ()), None)

    def fetch(self, ref: ModelRef, dest: Path) -> FetchedModel:
        mlflow = _mlflow()
        from mlflow.models import Model

        info = self.resolve(ref)
        uri = f"models:/{info.name}/{info.version}"
        mlflow.set_tracking_uri(self.location)
        mlflow.set_registry_uri(self.location)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
        meta = Model.load(str(local))
        flavor = next((f for f in KNOWN_FLAVORS if f in meta.flavors), None)
        if flavor is None:
            raise RegistryError(
                f"{uri} has flavors {sorted(meta.flavors)}; modelgate converts only "
                f"{', '.join(KNOWN_FLAVORS)}"
            )
        conf = meta.flavors[flavor]
        model_file = local / (conf.get("pickled_model") or conf["data"])
        sample = self._input_example(meta, local)
        return FetchedModel(
            name=info.name,
            version=info.version,
            uri=uri,
            flavor=flavor,
            model_file=model_file,
            files=sorted(p for p in model_file.parent.rglob("*") if p.is_file())
            if model_file.is_dir()
            else [model_file],
            serialization_format=conf.get("serialization_format")
            or ("native" if flavor in ("xgboost", "lightgbm") else None),
            model_class=conf.get("model_class"),
            sample=sample,
            sample_source=f"MLflow input_example ({len(sample)} rows)"
            if sample is not None
            else "none",
            extra={"trusted_types": list(conf.get("skops_trusted_types") or [])},
        )

    def publish_sklearn(self, name: str, model: Any, sample: Any) -> str:
        mlflow = _mlflow()
        import sklearn
        import skops

        mlflow.set_tracking_uri(self.location)
        mlflow.set_registry_uri(self.location)
        experiment_id = self._experiment_id()
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-publish"):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                serialization_format="skops",
                skops_trusted_types=_untrusted_types(model),
                input_example=sample,
                registered_model_name=name,
                pip_requirements=[
                    f"scikit-learn=={sklearn.__version__}",
                    f"skops=={skops.__version__}",
                ],
            )
        return str(info.registered_model_version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def _experiment_id(self) -> str:
        existing = self._client.get_experiment_by_name(EXPERIMENT)
        if existing is not None:
            return str(existing.experiment_id)
        artifact_location = None
        if self.location.startswith("sqlite:///"):
            db = Path(self.location.removeprefix("sqlite:///")).resolve()
            artifact_location = (db.parent / "mlruns").as_uri()
        return str(self._client.create_experiment(EXPERIMENT, artifact_location=artifact_location))

    def _model_info(self, rm: Any) -> ModelInfo:
        aliases = {str(k): str(v) for k, v in (rm.aliases or {}).items()}
        versions = sorted(
            self._client.search_model_versions(f"name='{rm.name}'"), key=lambda mv: int(mv.version)
        )
        return ModelInfo(
            rm.name,
            tuple(
                VersionInfo(
                    rm.name,
                    str(mv.version),
                    tuple(sorted(a for a, v in aliases.items() if v == str(mv.version))),
                    None,
                )
                for mv in versions
            ),
            aliases,
        )

    @staticmethod
    def _input_example(meta: Any, local: Path) -> Any:
        if meta.saved_input_example_info is None:
            return None
        return meta.load_input_example(str(local))


def _untrusted_types(model: Any) -> list[str]:
    """The types skops would refuse in this freshly trained model (we made it, so we vouch)."""
    import tempfile

    import skops.io

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.skops")
        skops.io.dump(model, path)
        return list(skops.io.get_untrusted_types(file=path))
