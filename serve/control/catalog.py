"""The catalog: the models an application serves beside its config's, changed in place.

Where things live (none on a node's disk, all in Ray's KV):
- `catalog/<app>/entries`: each catalog model's version, aliases and pinned artifact
  (serve/core/artifact_cache.py: ArtifactRef), written by the control plane;
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
from pathlib import Path
from typing import Any

from converters.artifacts import cached
from converters.errors import ModelgateError
from converters.registry import ModelRef, Registry, open_registry
from serve.control import distribute
from serve.control.kvstore import KVStore
from serve.control.resolve import ConfigError, Resolved, _resolve
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
        for model, (version, source, aliases) in sorted(listed.items()):
            try:
                entries[model] = self._entry(model, version, source) | {"aliases": aliases}
            except (ConfigError, ModelgateError) as exc:
                refused[model] = str(exc)
                logger.error("catalog: %s v%s is not served: %s", model, version, exc)
        self.store.write_refused(refused)
        return self.store.write_entries(entries)

    # -- the source ---------------------------------------------------------------------------
    def _listed(self) -> tuple[dict[str, tuple[str, str, dict[str, str]]], dict[str, str]]:
        """model → (version, source, aliases): what the source lists now; and what it lists
        but cannot be served."""
        out: dict[str, tuple[str, str, dict[str, str]]] = {}
        refused: dict[str, str] = {}
        alias = self.catalog.alias
        if alias is not None:
            for info in self.registry().list_models():
                if alias in info.aliases:
                    version = info.aliases[alias]
                    out[info.name] = (version, f"models:/{info.name}/{version}", {alias: version})
        if self.catalog.artifacts is not None:
            for manifest_file in sorted(Path(self.catalog.artifacts).rglob("manifest.json")):
                folder = manifest_file.parent
                manifest = cached(folder)
                if manifest is None:
                    refused[str(folder)] = "not a complete artifact (model.onnx, manifest.json)"
                    continue
                current = out.get(manifest.name)
                if current is None or _newer(manifest.version, current[0]):
                    out[manifest.name] = (manifest.version, str(folder), {})
        return out, refused

    def _latest(self, model: str) -> tuple[str, str, dict[str, str]] | str:
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
        return version, f"models:/{model}/{version}", {}

    # -- one entry ----------------------------------------------------------------------------
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
        artifact, number = _resolve(self.config, self.registry, config, where)
        resolved = Resolved(ModelConfig(name=model, versions=[config]), config, artifact, number)
        (ref,) = distribute.pin(self.config, [resolved])
        entry = {"version": number, "source": source, "ref": ref.model_dump(mode="json")}
        self._pinned[(model, version)] = entry
        return entry


def _newer(a: str, b: str) -> bool:
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a > b
