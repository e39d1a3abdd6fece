"""Deploy-time resolution: each configured version becomes a verified artifact on disk.

A `uri` version is converted through the artifact cache (a registry alias is resolved now and
pinned: what is deployed is the version it named at this moment). An `artifact` version is checked
as it is. Anything that cannot be served fails here, before Ray Serve changes anything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from converters.artifacts import cached
from converters.errors import ModelgateError
from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import Registry, open_registry
from serve.core.config import GatewayConfig, ModelConfig, VersionConfig


class Resolved(NamedTuple):
    """One configured version, resolved: its model, its config, its artifact folder and the
    version number it serves as."""

    model: ModelConfig
    config: VersionConfig
    artifact: str
    version: str


class ConfigError(ModelgateError, ValueError):
    """A gateway config that cannot be deployed; the message says which field and why."""


def resolve_versions(config: GatewayConfig) -> list[Resolved]:
    # Opened once, and only if a version names a registry URI.
    registry = functools.cache(lambda: open_registry(config.registry))
    resolved: list[Resolved] = []
    for model in config.models:
        seen: set[str] = set()
        for index, version in enumerate(model.versions):
            where = f"models[{model.name}].versions[{index}]"
            artifact, number = _resolve(config, registry, version, where)
            if number in seen:
                raise ConfigError(f"{where}: version {number} of '{model.name}' is listed twice")
            seen.add(number)
            resolved.append(Resolved(model, version, artifact, number))
    return resolved


def _resolve(
    config: GatewayConfig, registry: Callable[[], Registry], version: VersionConfig, where: str
) -> tuple[str, str]:
    if version.artifact is not None:
        path = Path(version.artifact).resolve()
        manifest = cached(path)
        if manifest is None:
            raise ConfigError(
                f"{where}.artifact: {path} is not a complete artifact "
                "(model.onnx whose sha256 matches manifest.json)"
            )
        return str(path), manifest.version
    assert version.uri is not None
    try:
        result = convert_uri(
            registry(), version.uri, ConvertOptions(out=Path(config.artifacts).resolve())
        )
    except ModelgateError as exc:
        raise ConfigError(f"{where}.uri: {exc}") from exc
    return str(result.path.resolve()), result.manifest.version
