"""A registry that is a plain folder: ``<root>/<name>/<version>/model.<ext>``.

Per model, an optional ``aliases.json`` maps alias -> version. Per version, an optional
``sample.json`` holds sample rows (see `converters.samples`) for the parity check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from converters.errors import RegistryError
from converters.registry import FetchedModel, ModelInfo, ModelRef, Registry, VersionInfo
from converters.samples import read_sample, write_sample

#: model file suffix -> (flavor, serialization format)
MODEL_FILES: dict[str, tuple[str, str | None]] = {
    ".onnx": ("onnx", None),
    ".skops": ("sklearn", "skops"),
    ".joblib": ("sklearn", "pickle"),
    ".pkl": ("sklearn", "pickle"),
    ".pickle": ("sklearn", "pickle"),
    ".txt": ("lightgbm", "native"),
    ".lgb": ("lightgbm", "native"),
    ".ubj": ("xgboost", "native"),
    ".json": ("xgboost", "native"),
}
SAMPLE_FILE = "sample.json"
ALIASES_FILE = "aliases.json"


class LocalRegistry(Registry):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def list_models(self) -> list[ModelInfo]:
        if not self.root.is_dir():
            return []
        return [self._model_info(d.name) for d in sorted(self.root.iterdir()) if d.is_dir()]

    def resolve(self, ref: ModelRef) -> VersionInfo:
        info = self._model_info(ref.name)
        version = ref.version or info.aliases.get(ref.alias or "")
        if version is None:
            raise RegistryError(
                f"model {ref.name!r} has no alias {ref.alias!r}; "
                f"aliases are: {', '.join(sorted(info.aliases)) or 'none'}"
            )
        found = next((v for v in info.versions if v.version == version), None)
        if found is None:
            raise RegistryError(
                f"model {ref.name!r} has no version {version}; versions are: "
                f"{', '.join(v.version for v in info.versions) or 'none'} (in {self.root})"
            )
        return found

    def fetch(self, ref: ModelRef, dest: Path) -> FetchedModel:
        info = self.resolve(ref)
        src = self.root / info.name / info.version
        model_file = self._model_file(src)
        dest.mkdir(parents=True, exist_ok=True)
        local = dest / model_file.name
        shutil.copyfile(model_file, local)
        flavor, fmt = MODEL_FILES[model_file.suffix]
        sample_path = src / SAMPLE_FILE
        sample = read_sample(sample_path) if sample_path.exists() else None
        return FetchedModel(
            name=info.name,
            version=info.version,
            uri=f"models:/{info.name}/{info.version}",
            flavor=flavor,
            model_file=local,
            files=[local],
            serialization_format=fmt,
            sample=sample,
            sample_source=f"{SAMPLE_FILE} ({len(sample)} rows)" if sample is not None else "none",
        )

    def publish_sklearn(self, name: str, model: Any, sample: Any) -> str:
        import skops.io

        existing = [int(v.version) for v in self._versions(name)]
        version = str(max(existing, default=0) + 1)
        directory = self.root / name / version
        directory.mkdir(parents=True)
        skops.io.dump(model, directory / "model.skops")
        if sample is not None:
            write_sample(directory / SAMPLE_FILE, sample)
        return version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.resolve(ModelRef(name, version=version))
        aliases = self._aliases(name)
        aliases[alias] = version
        (self.root / name / ALIASES_FILE).write_text(json.dumps(aliases, indent=2, sort_keys=True))

    def _model_info(self, name: str) -> ModelInfo:
        if not (self.root / name).is_dir():
            known = ", ".join(m.name for m in self.list_models()) if self.root.is_dir() else ""
            raise RegistryError(
                f"model {name!r} is not in the folder registry {self.root}; "
                f"models are: {known or 'none'}"
            )
        return ModelInfo(name, tuple(self._versions(name)), self._aliases(name))

    def _versions(self, name: str) -> list[VersionInfo]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        aliases = self._aliases(name)
        versions = sorted(
            (d for d in directory.iterdir() if d.is_dir() and d.name.isdigit()),
            key=lambda d: int(d.name),
        )
        return [
            VersionInfo(
                name,
                d.name,
                tuple(sorted(a for a, v in aliases.items() if v == d.name)),
                self._flavor(d),
            )
            for d in versions
        ]

    def _aliases(self, name: str) -> dict[str, str]:
        path = self.root / name / ALIASES_FILE
        if not path.exists():
            return {}
        try:
            return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"{path} is not a JSON object of alias -> version: {exc}") from exc

    def _flavor(self, directory: Path) -> str | None:
        try:
            return MODEL_FILES[self._model_file(directory).suffix][0]
        except RegistryError:
            return None

    def _model_file(self, directory: Path) -> Path:
        files = [p for p in directory.glob("model.*") if p.suffix in MODEL_FILES]
        if len(files) != 1:
            raise RegistryError(
                f"{directory} must hold exactly one model file named model.<ext> with <ext> one of "
                f"{', '.join(MODEL_FILES)}; found {[p.name for p in files] or 'none'}"
            )
        return files[0]
