"""Where models come from: one small interface, two backends (MLflow Model Registry, a folder).

A model is named by a URI: ``models:/name/3`` (a version) or ``models:/name@champion`` (an alias).
A registry location is either an MLflow tracking/registry URI (``sqlite:///…``, ``http://…``) or a
folder (``./models``, ``file:./models``) laid out as ``<name>/<version>/``.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import RegistryError

DEFAULT_REGISTRY = "sqlite:///.modelgate/mlflow.db"
MLFLOW_SCHEMES = ("sqlite:", "http:", "https:", "postgresql:", "mysql:", "databricks")

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_\-]+))$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: a name and either a version or an alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        match = _URI.match(uri.strip())
        if match is None:
            raise RegistryError(
                f"model URI {uri!r} is not of the form models:/<name>/<version> "
                "or models:/<name>@<alias>"
            )
        return cls(match["name"], match["version"], match["alias"])

    def __str__(self) -> str:
        return (
            f"models:/{self.name}/{self.version}"
            if self.version
            else f"models:/{self.name}@{self.alias}"
        )


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: tuple[str, ...]
    flavor: str | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[VersionInfo, ...]
    aliases: dict[str, str]


@dataclass
class FetchedModel:
    """A model version copied to local disk, ready for a loader."""

    name: str
    version: str
    uri: str
    flavor: str
    model_file: Path
    files: list[Path]
    serialization_format: str | None = None
    model_class: str | None = None
    sample: Any = None
    sample_source: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


class Registry(ABC):
    """The interface every backend implements."""

    location: str

    @abstractmethod
    def list_models(self) -> list[ModelInfo]: ...

    @abstractmethod
    def resolve(self, ref: ModelRef) -> VersionInfo:
        """The version a reference points to (an alias resolved to its current version)."""

    @abstractmethod
    def fetch(self, ref: ModelRef, dest: Path) -> FetchedModel:
        """Copy the model's files under `dest` and describe them."""

    @abstractmethod
    def publish_sklearn(self, name: str, model: Any, sample: Any) -> str:
        """Register a fitted scikit-learn model (saved with skops) and return its new version."""

    @abstractmethod
    def set_alias(self, name: str, alias: str, version: str) -> None: ...


#: Where the registry is when neither the command line nor the config says (read only here).
REGISTRY_ENV = "MODELGATE_REGISTRY"


def open_registry(location: str | None = None) -> Registry:
    """Open the registry at `location`: an MLflow URI, or a folder; by default the one
    $MODELGATE_REGISTRY names, else DEFAULT_REGISTRY."""
    location = location or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    if location.startswith(MLFLOW_SCHEMES):
        from converters.mlflow_registry import MlflowRegistry

        return MlflowRegistry(location)
    from converters.local_registry import LocalRegistry

    return LocalRegistry(Path(location.removeprefix("file:")))
