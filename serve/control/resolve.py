"""Deploy-time resolution: each configured version becomes a verified artifact on disk.

A `uri` version is converted through the artifact cache (a registry alias is resolved now and
pinned: what is deployed is the version it named at this moment). An `artifact` version is checked
as it is. Anything that cannot be served fails here, before Ray Serve changes anything.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from converters.artifacts import cached
from converters.errors import ModelgateError
from converters.pipeline import ConvertOptions, convert_uri
from converters.registry import ModelRef, Registry, open_registry
from serve.control.follow import FollowState, FollowStore
from serve.core.config import GatewayConfig, ModelConfig, VersionConfig

logger = logging.getLogger("modelgate")


class Resolved(NamedTuple):
    """One configured version, resolved: its model, its config, its artifact folder and the
    version number it serves as."""

    model: ModelConfig
    config: VersionConfig
    artifact: str
    version: str
    #: A followed alias: "serving" (what the gateway serves as the alias) or "candidate" (where
    #: the registry's alias moved, to be delivered); "" otherwise.
    role: str = ""


class ConfigError(ModelgateError, ValueError):
    """A gateway config that cannot be deployed; the message says which field and why."""


def resolve_versions(config: GatewayConfig, follow: FollowStore | None = None) -> list[Resolved]:
    """Every configured version as a verified artifact. `follow`: the followed aliases' state
    (without it, a followed alias resolves as the registry has it now, like any other)."""
    # Opened once, and only if a version names a registry URI.
    registry = functools.cache(lambda: open_registry(config.registry))
    resolved: list[Resolved] = []
    for model in config.models:
        seen: set[str] = set()
        for index, version in enumerate(model.versions):
            where = f"models[{model.name}].versions[{index}]"
            if version.follow and follow is not None:
                found = _followed(config, registry, follow, model, version, where)
            else:
                artifact, number = convert_version(config, registry, version, where)
                found = [Resolved(model, version, artifact, number, version.follow * "serving")]
            for r in found:
                if r.version in seen:
                    raise ConfigError(
                        f"{where}: version {r.version} of '{model.name}' is listed twice"
                    )
                seen.add(r.version)
            resolved += found
    return resolved


def _followed(
    config: GatewayConfig,
    registry: Callable[[], Registry],
    follow: FollowStore,
    model: ModelConfig,
    version: VersionConfig,
    where: str,
) -> list[Resolved]:
    """The version the gateway serves as the alias, and the registry's, when the alias moved to
    one not refused before: converted and verified here, in the control plane. A candidate that
    fails conversion is refused (and says why); the serving version serves on."""
    assert version.uri is not None
    ref = ModelRef.parse(version.uri)
    assert ref.alias is not None
    location = registry().location
    try:
        current = registry().resolve(ref).version
    except ModelgateError as exc:
        raise ConfigError(f"{where}.uri: {exc}") from exc
    state = follow.get(location, ref.name, ref.alias)
    if state is None:
        state = FollowState(serving=current)
        follow.put(location, ref.name, ref.alias, state)
    pinned = version.model_copy(update={"uri": f"models:/{ref.name}/{state.serving}"})
    artifact, number = convert_version(config, registry, pinned, where)
    out = [Resolved(model, version, artifact, number, "serving")]
    if current == state.serving or current in state.refused:
        return out
    candidate = version.model_copy(update={"uri": f"models:/{ref.name}/{current}"})
    try:
        artifact, number = convert_version(config, registry, candidate, where)
    except ConfigError as exc:
        state.refused[current] = f"conversion failed: {exc}"
        follow.put(location, ref.name, ref.alias, state)
        logger.error("%s@%s: v%s is not served: %s", ref.name, ref.alias, current, exc)
        return out
    return [*out, Resolved(model, version, artifact, number, "candidate")]


def convert_version(
    config: GatewayConfig, registry: Callable[[], Registry], version: VersionConfig, where: str
) -> tuple[str, str]:
    """One version's artifact, converted and verified through the cache (or the artifact it
    names, checked): its folder and version number. ConfigError names `where` when it fails."""
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
