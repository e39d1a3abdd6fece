"""The catalog on Ray (its logic: serve/control/catalog.py, serve/core/resident.py).

- `CatalogActor`: one per application, detached, started by the routers and restarted by Ray,
  reading the catalog's config from Ray's KV (the routers write it) so a restarted actor or a
  changed config needs nothing passed. It converts in the control plane, never in a serving
  replica, and ends by itself once its application is gone.
- `CatalogWatch`: a router replica's side: its catalog models in the data plane, their sessions
  within the budget, the batches it sends to (and takes from) the router each model is placed on.
- `CatalogPool`: with `catalog.pool`, the deployment whose replicas hold the catalog's sessions
  instead of the routers (each model placed on one of them); `CatalogSessions` is what a router
  and a pool replica share: the artifacts, the resident set, the peers' batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import ray
from ray import serve

from converters.manifest import Manifest
from serve.control.catalog import CatalogStore, CatalogSync, actor_name
from serve.control.delivery import GONE_PERIODS
from serve.core import runners
from serve.core.artifact_cache import ArtifactRef, local_manifest, open_runtime
from serve.core.batching import MicroBatcher
from serve.core.config import GatewayConfig
from serve.core.dataplane import CatalogModel, DataPlane, VersionTarget
from serve.core.errors import ErrorCode, InferenceError
from serve.core.resident import ResidentSet
from serve.core.routing import Follow
from serve.core.runtime import ArtifactError
from serve.core.types import Feeds
from serve.observe.telemetry import ReplicaTelemetry
from serve.ray.delivery import ensure_detached
from serve.ray.internals import KVDirectory, serve_details
from serve.transport.direct import DirectServer, FrameLimits, PeerPool, kv_prefix

logger = logging.getLogger("modelgate.catalog")
T = TypeVar("T")

CONFIG_KEY = "config"


def ensure_catalog(app: str, config: GatewayConfig) -> None:
    """Publish the catalog's config and start the application's catalog actor unless it runs
    (a router calls it, off its event loop)."""
    store = CatalogStore(app, KVDirectory())
    fields = {"catalog", "registry", "artifacts", "distribute", "shared_artifacts"}
    text = config.model_dump_json(include=fields)
    if KVDirectory().get(store.prefix + CONFIG_KEY) != text:
        KVDirectory().publish(store.prefix + CONFIG_KEY, text)
    ensure_detached(CatalogActor, actor_name(app), app)


class CatalogActor:
    """A control period every `refresh_s` (the config's), in a thread."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.store = CatalogStore(app, KVDirectory())
        self._sync: CatalogSync | None = None
        self._config_text = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelgate-catalog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        missing, period = 0, 1.0
        while True:
            try:
                sync = self._current()
                if sync is not None:
                    assert sync.catalog is not None
                    period = sync.catalog.refresh_s
                    sync.tick()
                missing = 0 if self.app in serve_details().get("applications", {}) else missing + 1
            except Exception:  # the GCS restarting, or a registry down: try again next period
                logger.warning("catalog period failed", exc_info=True)
            if missing >= GONE_PERIODS:
                logger.info("application %s is gone: its catalog ends", self.app)
                self.store.clear()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
            # Requests (a repository load) are taken within a second whatever the period.
            for _ in range(max(1, round(period))):
                if self._stop.wait(1.0):
                    return
                if self.store.kv.listing(self.store.prefix + "requests/"):
                    break

    def _current(self) -> CatalogSync | None:
        text = KVDirectory().get(self.store.prefix + CONFIG_KEY) or ""
        if text != self._config_text:
            self._config_text = text
            self._sync = None
            if text:
                doc = json.loads(text)
                config = GatewayConfig.model_validate(doc)
                self._sync = CatalogSync(config, self.store)
        return self._sync


class CatalogSessions:
    """The catalog versions' sessions on one replica (a router, or a catalog pool replica):
    the artifacts it knows by key ('<model>:<version>'), their sessions loaded on first use
    within a budget (serve/core/resident.py), and the batches peers send it."""

    def __init__(
        self, config: GatewayConfig, telemetry: ReplicaTelemetry, budget: tuple[int, int, int]
    ) -> None:
        from serve.observe.metrics import CatalogMetrics, ResidentObserver

        assert config.catalog is not None
        self.config, self.catalog, self.telemetry = config, config.catalog, telemetry
        self.refs: dict[str, ArtifactRef] = {}  # key → artifact
        self.manifests: dict[str, Manifest] = {}  # key → manifest (a peer's frame limits)
        self.metrics = CatalogMetrics(telemetry.metrics.registry)
        max_resident, max_loading, max_pending = budget
        self.resident = ResidentSet(
            self._load,
            max_resident,
            max_loading,
            max_pending,
            observer=ResidentObserver(self.metrics),
        )

    def server(
        self,
        app: str,
        key: str,
        run_model: Callable[[str, Feeds, float | None], Awaitable[Feeds]] | None = None,
    ) -> DirectServer:
        """The listener peers send this replica's models' batches to (started by the owner);
        `run_model`: what runs one (`serve_peer` if None)."""
        directory = KVDirectory()
        refused = self.telemetry.metrics.direct_refused
        return DirectServer(
            _refuse_plain,
            directory,
            key,
            directory.shared_secret(app),
            self.frame_limits,
            lambda reason: refused.labels("", "", reason).inc(),
            run_model=run_model or self.serve_peer,
        )

    def _load(self, key: str) -> Callable[[Feeds], Feeds]:
        """In a thread: the session, checked against its pinned digests and warmed up."""
        model, version = key.rsplit(":", 1)
        runtime = open_runtime(self.refs[key], 1)
        runtime.warm_up()
        return self.telemetry.instrument(
            runtime, model, version, drift=self.catalog.drift, series=(CATALOG_SERIES, "")
        )

    def frame_limits(self, key: str | None) -> FrameLimits:
        """What a peer's batch of `key` can be; for a model not (yet) in this replica's
        catalog, any numeric tensors within the limit (answered UNAVAILABLE: run it there)."""
        limits = self.config.limits
        rows = self.catalog.batching.max_batch_rows
        manifest = self.manifests.get(key or "")
        if manifest is None:
            return FrameLimits(None, rows, limits.max_elements)
        inputs = {
            spec.name: (spec.numpy_dtype, tuple(spec.shape))
            for spec in manifest.signature.inputs
            if spec.datatype != "BYTES"
        }
        return FrameLimits(inputs, rows, limits.max_elements)

    async def serve_peer(self, key: str, feeds: Feeds, deadline: float | None) -> Feeds:
        """A peer's batch of a model placed here."""
        if key not in self.refs:
            raise InferenceError(ErrorCode.UNAVAILABLE, f"{key} is not in this replica's catalog")
        session = self.resident.get(key) or await self.resident.acquire(key, deadline)
        return session(feeds)


class CatalogWatch:
    """One router's catalog models (serve/control/catalog.py), kept as the catalog's entries in
    Ray's KV say: each `refresh_s` (the router's) it reads the revision, and when it moved, adds,
    re-points and removes models in place (serve/core/dataplane.py: update_catalog), their
    sessions loaded on first use within the budget (serve/core/resident.py). It also makes
    sure the catalog's actor runs, and answers Triton's load and unload (CatalogControl).

    The first entries are waited for in the constructor (at most `FIRST_WAIT_S`), so that a
    replica is ready with its catalog; later changes never block a request: the KV calls and
    the manifests' reads run in a thread."""

    FIRST_WAIT_S = 120.0
    ENSURE_S = 10.0
    #: Seconds between a router's reports of the catalog revision it applied.
    REPORT_S = 2.0
    #: Seconds a load or unload through the repository API waits for the catalog to change.
    CONTROL_WAIT_S = 120.0

    def __init__(
        self,
        app: str,
        config: GatewayConfig,
        plane: DataPlane,
        telemetry: ReplicaTelemetry,
        refresh_s: float,
    ) -> None:
        from serve.control.catalog import CatalogStore

        assert config.catalog is not None
        self.app, self.config, self.catalog = app, config, config.catalog
        self.plane, self.telemetry, self.refresh_s = plane, telemetry, refresh_s
        self.store = CatalogStore(app, KVDirectory())
        self.targets: dict[str, VersionTarget] = {}  # key → its target
        self.keys: dict[str, set[str]] = {}  # model → its versions' keys
        self.applied: dict[str, Any] = {}  # model → the catalog's entry, as applied
        c = self.catalog
        budget = (c.max_resident, c.max_loading, c.max_pending_loads)
        self.sessions = CatalogSessions(config, telemetry, budget)
        self.refs, self.manifests = self.sessions.refs, self.sessions.manifests
        self.resident, self.metrics = self.sessions.resident, self.sessions.metrics
        self.revision = 0
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._reported, self._reported_rev = 0.0, -1
        self._batches = _Lazy(lambda: telemetry.metrics.batch_observer(CATALOG_SERIES, ""))
        self.peers: PeerPool | None = None
        self.server: DirectServer | None = None
        directory = KVDirectory()
        if c.pool is not None:  # the pool's replicas hold the sessions; this one none
            secret = directory.shared_secret(app)
            self.peers = PeerPool(f"{app} catalog pool", directory, kv_prefix(app, POOL), secret)
        elif c.placement == "hashed":
            prefix = kv_prefix(app, PEERS)
            self.peers = PeerPool(f"{app} routers", directory, prefix, directory.shared_secret(app))
            self.server = self.sessions.server(app, prefix + self.replica)
        self._ensure()
        self._ensured = time.monotonic()
        deadline = time.monotonic() + self.FIRST_WAIT_S
        while self.store.revision() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        while c.pool is not None and self.peers is not None and time.monotonic() < deadline:
            self.peers.refresh()  # ready once a pool replica listens (they start beside)
            if self.peers.live():
                break
            time.sleep(0.2)
        plane.catalog_policy = c.delivery
        self._apply(self._read())
        plane.catalog = self
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- the control plane's side -------------------------------------------------------------
    def _ensure(self) -> None:
        from serve.ray.catalog import ensure_catalog

        ensure_catalog(self.app, self.config)

    def _read(self) -> Changes:
        """The catalog's revision and what changed since the last applied: each changed
        model built (its new or re-pointed versions' targets made, their manifests read and
        checked; its other versions' targets kept), and the models removed. In a thread after
        the first."""
        revision = self.store.revision()
        changes = Changes(revision)
        if revision == self.revision:
            return changes
        entries = self.store.entries()
        for model, entry in entries.items():
            if self.applied.get(model) == entry:
                continue
            versions: dict[str, VersionTarget] = {}
            for version, pinned in entry["versions"].items():
                key = f"{model}:{version}"
                ref = ArtifactRef.model_validate(pinned["ref"])
                target = self.targets.get(key)
                if target is None or self.refs.get(key) != ref:
                    try:
                        manifest = local_manifest(ref)
                    except ArtifactError as exc:
                        logger.error("catalog: %s is not served: %s", key, exc)
                        continue
                    target = self._target(model, version, manifest)
                    changes.fresh[key] = (ref, manifest, target)
                versions[version] = target
            if entry["default"] not in versions:
                continue  # said above; the model stays as it was
            aliases = {a: v for a, v in entry["aliases"].items() if v in versions}
            follow = None if entry["follow"] is None else Follow(**entry["follow"])
            changes.added[model] = (
                CatalogModel(versions, aliases, entry["default"], follow),
                entry,
            )
        changes.removed = {m for m in self.keys if m not in entries}
        return changes

    def _target(self, model: str, version: str, manifest: Manifest) -> VersionTarget:
        key = f"{model}:{version}"
        b = self.catalog.batching
        metrics = self.telemetry.metrics
        # Per model: the requests' series (made with its first request, in the data plane)
        # and these, made with its first batch. The batches' own series (queue wait, batch
        # time, rows, compute) are the catalog's as a whole: a thousand models with a dozen
        # histograms each would make the node's exposition megabytes and seconds long.
        taken = metrics.transport_batches
        counted = (
            _Lazy(lambda: metrics.counter(taken.labels(model, version, "peer"))),
            _Lazy(lambda: metrics.counter(taken.labels(model, version, "local"))),
        )
        observer = self._batches
        batcher = MicroBatcher(
            key,
            runners.lazy(key, self.resident, self.peers, counted, self.catalog.pool is None),
            max_batch_rows=b.max_batch_rows,
            max_wait_s=b.max_wait_ms / 1000,
            max_in_flight=b.max_in_flight,
            max_queued=b.max_queued,
            on_batch=lambda *batch: observer.get()(*batch),
        )
        timeout_s = None if self.catalog.timeout_ms is None else self.catalog.timeout_ms / 1000
        return VersionTarget(model, version, manifest, batcher, "colocated", timeout_s)

    def _apply(self, changes: Changes) -> None:
        """On the event loop (or in the constructor): the plane changes at once. A version
        removed or re-pointed drops its session here (a request that holds it finishes)."""
        if changes.revision == self.revision:
            return
        for key, (ref, manifest, target) in changes.fresh.items():
            self.resident.discard(key)  # the same version rebuilt from another artifact
            self.refs[key], self.manifests[key], self.targets[key] = ref, manifest, target
        for model in set(changes.added) | changes.removed:
            kept = set()
            if model in changes.added:
                kept = {f"{model}:{v}" for v in changes.added[model][0].versions}
            for key in self.keys.pop(model, set()) - kept:
                self.resident.discard(key)
                self.refs.pop(key, None)
                self.manifests.pop(key, None)
                self.targets.pop(key, None)
            if model in changes.added:
                self.keys[model] = kept
                self.applied[model] = changes.added[model][1]
            else:
                self.applied.pop(model, None)
        added = {m: built for m, (built, _) in changes.added.items()}
        self.plane.update_catalog(added, changes.removed)
        self.metrics.catalog_models.set(len(self.keys))
        self.revision = changes.revision
        if self.catalog.pool is None:  # a pool's replicas warm their own
            pinned = {self._default_key(m) for m in self.catalog.pinned if m in self.keys}
            self.resident.pinned = pinned
            # A delivery's candidate is loaded where it is placed before its first copy.
            candidates = {
                f"{m}:{built.follow.candidate}"
                for m, (built, _) in changes.added.items()
                if built.follow is not None and built.follow.candidate is not None
            }
            mine = {k for k in candidates if self._placed_here(k)}
            with contextlib.suppress(RuntimeError):  # no running loop yet: warmed by the task
                self.resident.warm(pinned | mine)

    def _placed_here(self, key: str) -> bool:
        return self.peers is None or self.peers.owner(key) in (None, self.peers.own)

    def _default_key(self, model: str) -> str:
        return f"{model}:{self.applied[model]['default']}"

    async def _run(self) -> None:
        self.resident.warm(self.resident.pinned)
        if self.server is not None and self.peers is not None:
            try:
                self.peers.own = await self.server.start(ray.util.get_node_ip_address())
            except Exception:  # placement off for this replica: it serves what it is asked
                logger.warning("could not listen for peer routers", exc_info=True)
                self.server, self.peers.own = None, ""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                if self.peers is not None:
                    await asyncio.to_thread(self.peers.refresh)
                await self.refresh()
                if time.monotonic() - self._ensured > self.ENSURE_S:
                    await asyncio.to_thread(self._ensure)
                    self._ensured = time.monotonic()
            except Exception:
                logger.warning("could not read the catalog", exc_info=True)

    async def refresh(self) -> None:
        self._apply(await asyncio.to_thread(self._read))
        if time.monotonic() - self._reported > self.REPORT_S or self._reported_rev != self.revision:
            await asyncio.to_thread(self.store.report_applied, self.replica, self.revision)
            self._reported, self._reported_rev = time.monotonic(), self.revision

    async def _everywhere(self) -> None:
        """Until every router replica of the application has applied this one's revision
        (each reports what it applied every REPORT_S; one silent for 3 × REPORT_S has gone)."""
        deadline = time.monotonic() + self.CONTROL_WAIT_S
        while True:
            applied = await asyncio.to_thread(self.store.applied, time.time() - 3 * self.REPORT_S)
            if all(revision >= self.revision for revision in applied.values()):
                return
            if time.monotonic() > deadline:
                raise InferenceError(
                    ErrorCode.UNAVAILABLE,
                    "not every router replica applied the catalog's change in time: try again",
                    retry_after_s=5.0,
                )
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(Exception):
            self.store.forget_applied(self.replica)
        if self.server is not None:
            self.server.close()  # peers send here no more: what they send runs there

    # -- Triton's model control (serve/protocol/rest.py) ----------------------------------------
    def describe(self, model: str) -> dict[str, Any]:
        """`loaded`: this replica holds the session; `placed_on`: the router replica (its
        peer address) the model's batches run on, "" when every replica loads it; `router`:
        this replica's own address."""
        key = self._default_key(model) if model in self.keys else None
        placed = "" if self.peers is None or key is None else self.peers.owner(key) or ""
        own = "" if self.peers is None else self.peers.own
        return {"loaded": key in self.resident.resident, "placed_on": placed, "router": own}

    async def load(self, model: str) -> None:
        """In the catalog, and loaded where it is placed (here when it is placed here)."""
        await asyncio.to_thread(self.store.request, model, "load")
        await self._until(lambda: model in self.keys, model, "load")
        await self._everywhere()
        key = self._default_key(model)
        if self.catalog.pool is not None:
            return  # loaded by its pool replica on its first batch
        if self._placed_here(key):
            await self.resident.acquire(key, time.monotonic() + self.CONTROL_WAIT_S)

    async def unload(self, model: str) -> None:
        await asyncio.to_thread(self.store.request, model, "unload")
        await self._until(lambda: model not in self.keys, model, "unload")
        await self._everywhere()

    async def _until(self, done: Callable[[], bool], model: str, action: str) -> None:
        deadline = time.monotonic() + self.CONTROL_WAIT_S
        while True:
            await self.refresh()
            if done():
                return
            refused = (await asyncio.to_thread(self.store.refused)).get(model)
            if refused and action == "load":
                raise InferenceError(
                    ErrorCode.INVALID_ARGUMENT, f"model '{model}' cannot be loaded: {refused}"
                )
            if time.monotonic() > deadline:
                raise InferenceError(
                    ErrorCode.UNAVAILABLE,
                    f"the catalog did not {action} '{model}' within "
                    f"{self.CONTROL_WAIT_S:g} s: try again",
                    retry_after_s=5.0,
                )
            await asyncio.sleep(0.2)


@serve.deployment
class CatalogPool:
    """A catalog pool replica (`catalog.pool`): the sessions of the catalog models placed on
    it (rendezvous hashing over the pool's replicas, as the routers rank them), within the
    pool's budget; routers send it their batches over the direct transport (authenticated by
    the application's secret, bound to the node's address). It reads the catalog's entries
    from Ray's KV every `REFRESH_S`, and again before refusing a model it does not know (a
    router read the new revision first). Stopping, it leaves the directory and answers what
    is in flight before it goes (DirectServer.drain)."""

    REFRESH_S = 1.0

    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]
        self.config = GatewayConfig.model_validate(config)
        catalog = self.config.catalog
        assert catalog is not None and catalog.pool is not None
        self.catalog, pool = catalog, catalog.pool
        self.telemetry = ReplicaTelemetry(self.config.metrics, self.config.drift)
        context = serve.get_replica_context()
        self.app = context.app_name
        self.store = CatalogStore(self.app, KVDirectory())
        budget = (pool.max_resident, pool.max_loading, pool.max_pending_loads)
        self.sessions = CatalogSessions(self.config, self.telemetry, budget)
        prefix = kv_prefix(self.app, POOL)
        self.server = self.sessions.server(
            self.app, prefix + context.replica_id.unique_id, run_model=self._serve
        )
        directory = KVDirectory()  # the pool as the routers see it: which models are this one's
        secret = directory.shared_secret(self.app)
        self.peers = PeerPool(f"{self.app} catalog pool", directory, prefix, secret)
        self.revision = -1
        self.defaults: dict[str, str] = {}  # model → its default route's key
        self.candidates: set[str] = set()  # deliveries' candidates' keys
        self._lock = asyncio.Lock()
        self._stopping = True  # until started: nothing to drain
        await self.refresh()
        self.peers.own = await self.server.start(ray.util.get_node_ip_address())
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        listed = self.peers.listed
        while True:
            await asyncio.sleep(self.REFRESH_S)
            try:
                await asyncio.to_thread(self.peers.refresh)
                if self.peers.listed != listed:  # a replica missing is worth a warning
                    level = logging.WARNING if listed - self.peers.listed else logging.INFO
                    listed = self.peers.listed
                    logger.log(level, "catalog pool: %s lists %s", self.peers.own, sorted(listed))
                await self.refresh()
                self._warm_pinned()
            except Exception:
                logger.warning("could not read the catalog", exc_info=True)

    async def refresh(self) -> None:
        async with self._lock:
            read = await asyncio.to_thread(self._read)
            if read is not None:
                self._apply(*read)

    def _read(self) -> _PoolRead | None:
        """In a thread: the revision, every version's artifact, the manifests of those new or
        re-pointed, each model's default key, the keys of deliveries' candidates; None when the
        revision did not move."""
        revision = self.store.revision()
        if revision == self.revision:
            return None
        entries = self.store.entries()
        refs: dict[str, ArtifactRef] = {}
        fresh: dict[str, Manifest] = {}
        for model, entry in entries.items():
            for version, pinned in entry["versions"].items():
                key = f"{model}:{version}"
                ref = ArtifactRef.model_validate(pinned["ref"])
                if self.sessions.refs.get(key) != ref:
                    try:
                        fresh[key] = local_manifest(ref)
                    except ArtifactError as exc:
                        logger.error("catalog: %s is not served: %s", key, exc)
                        continue
                refs[key] = ref
        defaults = {m: f"{m}:{e['default']}" for m, e in entries.items()}
        candidates = {
            f"{m}:{e['follow']['candidate']}"
            for m, e in entries.items()
            if e["follow"] is not None and e["follow"]["candidate"] is not None
        }
        return revision, refs, fresh, defaults, candidates

    def _apply(
        self,
        revision: int,
        refs: dict[str, ArtifactRef],
        fresh: dict[str, Manifest],
        defaults: dict[str, str],
        candidates: set[str],
    ) -> None:
        s = self.sessions
        for key in list(s.refs):
            if key not in refs or key in fresh:  # removed or re-pointed: its session goes
                s.resident.discard(key)
                s.refs.pop(key, None)
                s.manifests.pop(key, None)
        for key, manifest in fresh.items():
            s.refs[key], s.manifests[key] = refs[key], manifest
        self.revision, self.defaults, self.candidates = revision, defaults, candidates
        s.metrics.catalog_models.set(len(defaults))

    def _warm_pinned(self) -> None:
        """The pinned models placed on this replica: loaded, and never evicted; deliveries'
        candidates placed here: loaded before their first copy. While the pool's listing
        lacks this replica, it keeps the pinned models it holds (PeerPool.placed)."""
        resident = self.sessions.resident
        pinned = {self.defaults[m] for m in self.catalog.pinned if m in self.defaults}
        resident.pinned = self.peers.placed(pinned, resident.pinned)
        resident.warm(resident.pinned | self.peers.placed(self.candidates, ()))

    async def _serve(self, key: str, feeds: Feeds, deadline: float | None) -> Feeds:
        if key not in self.sessions.refs:
            await self.refresh()
        return await self.sessions.serve_peer(key, feeds, deadline)

    def __del__(self) -> Any:
        """As a dedicated version's replica (serve/ray/app.py: ModelVersion): Ray Serve awaits
        the drain when it stops the replica."""
        if getattr(self, "_stopping", True):
            return None
        self._stopping = True
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.server.close()
            self.telemetry.close()
            return None
        return self._drain()

    async def _drain(self) -> None:
        await self.server.drain(notice_s=2 * self.REFRESH_S)
        self.telemetry.close()


#: A pool replica's read of the catalog: revision, artifacts, new manifests, default keys,
#: candidates' keys.
_PoolRead = tuple[int, dict[str, ArtifactRef], dict[str, Manifest], dict[str, str], set[str]]


@dataclass
class Changes:
    """What a router's read of the catalog found (CatalogWatch._read): models added or changed
    (built, with the entry they were built from), removed, and the targets made anew (with
    their artifacts and manifests)."""

    revision: int
    added: dict[str, tuple[CatalogModel, dict[str, Any]]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    fresh: dict[str, tuple[ArtifactRef, Manifest, VersionTarget]] = field(default_factory=dict)


class _Lazy(Generic[T]):
    """A value made on first use; a counter's `inc` on it makes it then."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            self._value = self._make()
        return self._value

    def inc(self) -> None:
        self.get().inc()  # type: ignore[attr-defined]


#: The `model` label of the batch series every catalog model shares (its version is "").
CATALOG_SERIES = "(catalog)"
#: The direct transport's directory entry of router replicas taking peers' catalog batches.
PEERS = "Router:catalog"
#: The catalog pool's deployment, and its replicas' entry in the direct transport's directory.
POOL = "CatalogPool"


def _refuse_plain(feeds: Feeds) -> Feeds:
    raise InferenceError(ErrorCode.INVALID_ARGUMENT, "a router takes catalog batches only")
