"""The catalog: the models an application serves beside its config's, changed in place.

Where things live (none on a node's disk, all in Ray's KV):
- `catalog/<app>/entries`: each catalog model's versions with their pinned artifacts
  (serve/core/artifact_cache.py: ArtifactRef), the registry's aliases among them, the default
  route's version and the alias it follows (with the candidate it moved to, while that one is
  delivered: serve/control/follow.py keeps that state), written by the control plane;
- `catalog/<app>/revision`: a counter bumped with each change: routers read it every second and
  the entries only when it moved (a thousand entries are a few hundred kilobytes);
- `catalog/<app>/requests/<model>`: a repository API's load or unload (Triton's model control),
  taken once by the control plane; `catalog/<app>/overrides`: what those requests decided, kept
  across the control plane's restarts;
- `catalog/<app>/refused`: models the source lists that could not be converted, and why.

`CatalogSync.tick` is the control plane's period (serve/ray/catalog.py runs it in a detached
actor per application): it lists the source (a registry alias, or a folder of artifacts),
converts and verifies what is new through the artifact cache as deploys do
(serve/control/resolve.py), pins each artifact (serve/control/distribute.py: published to the
registry's MLflow server when there is one), and writes the entries when they changed. Routers
(serve/ray/catalog.py: CatalogWatch) add and remove models in place; no replica restarts.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.artifacts import cached
from converters.errors import ModelgateError
from converters.registry import ModelRef, Registry, open_registry
from serve.control import distribute
from serve.control.follow import FollowState, FollowStore
from serve.control.kvstore import KVStore
from serve.control.resolve import ConfigError, Resolved, convert_version
from serve.core.config import CatalogConfig, GatewayConfig, ModelConfig, VersionConfig

logger = logging.getLogger("modelgate.catalog")

ACTIONS = ("load", "unload")


def actor_name(app: str) -> str:
    return f"modelgate-catalog:{app}"


class CatalogStore(KVStore):
    """The catalog's keys in Ray's KV."""

    def __init__(self, app: str, kv: Any) -> None:
        super().__init__(f"catalog/{app}/", kv)

    def revision(self) -> int:
        return int(self.kv.get(self.prefix + "revision") or 0)

    def entries(self) -> dict[str, Any]:
        return dict(self._read("entries"))

    def write_entries(self, entries: dict[str, Any]) -> bool:
        """Writes and bumps the revision when they changed; whether they did."""
        if entries == self.entries():
            return False
        self._write("entries", entries)
        self.kv.publish(self.prefix + "revision", str(self.revision() + 1))
        return True

    def overrides(self) -> dict[str, str]:
        return dict(self._read("overrides"))

    def write_overrides(self, overrides: dict[str, str]) -> None:
        self._write("overrides", overrides)

    def refused(self) -> dict[str, str]:
        return dict(self._read("refused"))

    def write_refused(self, refused: dict[str, str]) -> None:
        if refused != self.refused():
            self._write("refused", refused)

    def request(self, model: str, action: str) -> None:
        """A repository API call: load or unload `model` (taken by the next control period)."""
        assert action in ACTIONS
        self.kv.publish(f"{self.prefix}requests/{model}", action)

    def take_requests(self) -> dict[str, str]:
        prefix = self.prefix + "requests/"
        taken = {}
        for key, action in self.kv.listing(prefix).items():
            self.kv.remove(key)
            if action in ACTIONS:
                taken[key[len(prefix) :]] = action
        return taken

    def report_applied(self, replica: str, revision: int) -> None:
        """A router replica applied `revision` (Triton's load and unload wait for them all)."""
        self._write(f"applied/{replica}", [revision, time.time()])

    def applied(self, since: float) -> dict[str, int]:
        """Each router replica's applied revision, among those that reported after `since`."""
        prefix = self.prefix + "applied/"
        out = {}
        for key, text in self.kv.listing(prefix).items():
            revision, at = json.loads(text)
            if at >= since:
                out[key[len(prefix) :]] = int(revision)
        return out

    def forget_applied(self, replica: str) -> None:
        self.kv.remove(f"{self.prefix}applied/{replica}")


class CatalogSync:
    """One application's catalog, kept as its source says (see the module's docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        store: CatalogStore,
        registry: Callable[[], Registry] | None = None,
    ) -> None:
        assert config.catalog is not None
        self.config = config
        self.catalog: CatalogConfig = config.catalog
        self.store = store
        self.registry = registry or functools.cache(lambda: open_registry(config.registry))
        self._pinned: dict[tuple[str, str], dict[str, Any]] = {}  # (model, version) → entry
        self.follow = FollowStore(store.kv)  # followed aliases' state (serve/control/follow.py)

    def tick(self) -> bool:
        """One period: requests taken, the source listed, new versions converted and pinned,
        the entries written if they changed (whether they did)."""
        overrides = self.store.overrides()
        requests = self.store.take_requests()
        if requests:
            overrides |= requests
            self.store.write_overrides(overrides)
        listed, refused = self._listed()
        for model, action in overrides.items():
            if action == "unload":
                listed.pop(model, None)
            elif model not in listed:
                found = self._latest(model)
                if isinstance(found, str):
                    refused[model] = found
                else:
                    listed[model] = found
        entries = {}
        for model, one in sorted(listed.items()):
            entry = self._model(model, one, refused)
            if entry is not None:
                entries[model] = entry
        self.store.write_refused(refused)
        return self.store.write_entries(entries)

    def _model(self, model: str, one: Listed, refused: dict[str, str]) -> dict[str, Any] | None:
        """A model's entry: each version converted and pinned. The default route's version
        failing refuses the model; another version failing leaves it out (a followed alias's
        candidate is then refused for good, as the follower refuses one)."""
        versions: dict[str, Any] = {}
        follow = one.follow
        for version, source in sorted(one.versions.items()):
            try:
                versions[version] = self._entry(model, version, source)
            except (ConfigError, ModelgateError) as exc:
                logger.error("catalog: %s v%s is not served: %s", model, version, exc)
                if version == one.default:
                    refused[model] = str(exc)
                    return None
                refused[f"{model}:{version}"] = str(exc)
                if follow is not None and follow.get("candidate") == version:
                    self._refuse_candidate(model, follow["alias"], version, str(exc))
                    follow = follow | {"candidate": None}
        aliases = {a: v for a, v in one.aliases.items() if v in versions}
        return {"versions": versions, "aliases": aliases, "default": one.default, "follow": follow}

    # -- the source ---------------------------------------------------------------------------
    def _listed(self) -> tuple[dict[str, Listed], dict[str, str]]:
        """What the source lists now, per model; and what it lists but cannot be served."""
        out: dict[str, Listed] = {}
        refused: dict[str, str] = {}
        alias = self.catalog.alias
        if alias is not None:
            for info in self.registry().list_models():
                if alias in info.aliases:
                    out[info.name] = self._aliased(info.name, alias, info.aliases)
        if self.catalog.artifacts is not None:
            for manifest_file in sorted(Path(self.catalog.artifacts).rglob("manifest.json")):
                folder = manifest_file.parent
                manifest = cached(folder)
                if manifest is None:
                    refused[str(folder)] = "not a complete artifact (model.onnx, manifest.json)"
                    continue
                one = out.setdefault(manifest.name, Listed({}, {}, None))
                if manifest.version not in one.versions:
                    one.versions[manifest.version] = str(folder)
                if one.default is None or _newer(manifest.version, one.default):
                    one.default = manifest.version
        return out, refused

    def _aliased(self, model: str, alias: str, registry_aliases: dict[str, str]) -> Listed:
        """A model carrying the catalog's alias: the version the alias names (with a delivery
        policy: the version the gateway serves as the alias, and the one the alias moved to as
        the candidate), and the versions of the `also` aliases."""
        current = registry_aliases[alias]
        serving, candidate = current, None
        if self.catalog.delivery is not None:
            serving, candidate = self._followed(model, alias, current)
        versions = {serving: f"models:/{model}/{serving}"}
        aliases = {alias: serving}
        for other in self.catalog.also:
            version = registry_aliases.get(other)
            if version is not None:
                versions[version] = f"models:/{model}/{version}"
                aliases[other] = version
        if candidate is not None:
            versions[candidate] = f"models:/{model}/{candidate}"
        follow = {"alias": alias, "registry": self.config.registry, "candidate": candidate}
        return Listed(versions, aliases, serving, follow)

    def _followed(self, model: str, alias: str, current: str) -> tuple[str, str | None]:
        """(serving, candidate) of a followed alias (serve/control/follow.py keeps its state:
        the delivery controller moves `serving` on promotion, refuses a candidate that failed)."""
        assert self.config.registry is not None
        state = self.follow.get(self.config.registry, model, alias)
        if state is None:  # first seen: served as the registry has it
            state = FollowState(serving=current)
            self.follow.put(self.config.registry, model, alias, state)
        if current == state.serving or current in state.refused:
            return state.serving, None
        return state.serving, current

    def _refuse_candidate(self, model: str, alias: str, version: str, reason: str) -> None:
        assert self.config.registry is not None
        state = self.follow.get(self.config.registry, model, alias)
        if state is not None:
            state.refused[version] = reason
            self.follow.put(self.config.registry, model, alias, state)

    def _latest(self, model: str) -> Listed | str:
        """A model loaded through the repository API that the source does not list: its
        registry's latest version (or why not)."""
        if self.config.registry is None and self.catalog.alias is None:
            return f"'{model}' is not in the catalog's folder, and no registry is set"
        try:
            infos = {i.name: i for i in self.registry().list_models()}
        except ModelgateError as exc:
            return str(exc)
        info = infos.get(model)
        if info is None or not info.versions:
            return f"the registry has no model '{model}'"
        version = max((v.version for v in info.versions), key=int)
        return Listed({version: f"models:/{model}/{version}"}, {}, version)

    # -- one version --------------------------------------------------------------------------
    def _entry(self, model: str, version: str, source: str) -> dict[str, Any]:
        pinned = self._pinned.get((model, version))
        if pinned is not None and pinned["source"] == source:
            return pinned
        if source.startswith("models:/"):
            ModelRef.parse(source)
            config = VersionConfig(uri=source, placement="colocated")
        else:
            config = VersionConfig(artifact=source, placement="colocated")
        where = f"catalog[{model}]"
        artifact, _ = convert_version(self.config, self.registry, config, where)
        resolved = Resolved(ModelConfig(name=model, versions=[config]), config, artifact, version)
        (ref,) = distribute.pin(self.config, [resolved])
        entry = {"source": source, "ref": ref.model_dump(mode="json")}
        self._pinned[(model, version)] = entry
        return entry


@dataclass
class Listed:
    """A model as the source lists it: version → source (a registry URI or an artifact
    folder), the registry's aliases among them, the default route's version, and the alias it
    follows ({alias, registry, candidate}) when the source is one."""

    versions: dict[str, str]
    aliases: dict[str, str]
    default: str | None
    follow: dict[str, Any] | None = None


def _newer(a: str, b: str) -> bool:
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a > b
