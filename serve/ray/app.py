"""The gateway's deployments: the data plane (serve/core) and its protocol adapters
(serve/protocol) wired into Ray Serve. Wiring only; what a batch run means is serve/core/runners.py.

build_app(GatewayConfig) ─► Router (ingress: HTTP + gRPC)
                              ├── colocated versions: ONNX Runtime inside the router replica
                              ├── catalog models: loaded on first use, each placed on one router
                              │   replica (serve/ray/catalog.py: CatalogWatch), or on one replica
                              │   of the CatalogPool deployment (`catalog.pool`)
                              └── direct transport, else handles ─► ModelVersion deployments
                                  (one per dedicated model version)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import ray
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.deployment import Deployment
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from converters.manifest import Manifest
from converters.spec import Signature
from serve.control import distribute
from serve.control.follow import FollowStore
from serve.control.resolve import Resolved, resolve_versions
from serve.core import runners
from serve.core.admission import Admission
from serve.core.artifact_cache import ArtifactRef, local_manifest, open_runtime
from serve.core.auth import AuthConfig, Authenticator
from serve.core.batching import MicroBatcher
from serve.core.config import (
    Autoscaling,
    Batching,
    DriftConfig,
    GatewayConfig,
    Limits,
    MetricsConfig,
    Nodes,
    VersionConfig,
)
from serve.core.dataplane import DataPlane, Health, VersionTarget
from serve.core.errors import ErrorCode, InferenceError
from serve.core.routing import Follow, RoutingConfig
from serve.core.runners import expired, time_left
from serve.core.runtime import ArtifactError, VersionRuntime
from serve.core.types import Feeds
from serve.ingress import lean
from serve.ingress.lean import LeanGrpcListener, LeanListener
from serve.observe.exporter import MULTIPROC_ENV
from serve.observe.telemetry import ReplicaTelemetry
from serve.protocol import grpc_codec, rest
from serve.protocol.grpc_servicer import InferenceServicer
from serve.protocol.rest_codec import Limits as CodecLimits
from serve.ray import autoscale
from serve.ray.catalog import POOL, CatalogPool, CatalogWatch
from serve.ray.internals import KVDirectory, http_host, serve_details, session_dir
from serve.transport.direct import DirectPool, DirectServer, FrameLimits, kv_prefix

logger = logging.getLogger("modelgate")

#: Tries of one batch on a dedicated version whose replica dies under it (the deadline bounds
#: them too).
REPLICA_ATTEMPTS = 2


class VersionSpec(BaseModel):
    """What the router needs to know of one resolved version (all plain data)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    artifact: ArtifactRef
    placement: str
    batching: Batching
    intra_op_threads: int
    deployment: str | None
    timeout_ms: float | None
    allow_non_finite: bool = False
    max_elements: int = 1 << 24  # the gateway's limit per tensor (bounds direct frames)
    direct: bool = (
        False  # dedicated: batches over serve/transport/direct.py, the handle as fallback
    )


class TelemetrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: MetricsConfig
    drift: DriftConfig

    def start(self) -> ReplicaTelemetry:
        return ReplicaTelemetry(self.metrics, self.drift)


class RouterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_requests: int = 4096  # admitted at once; one more: 503 at once
    versions: list[VersionSpec]
    registry_aliases: dict[str, dict[str, str]]
    follows: dict[str, Follow] = {}
    registry: str | None = None
    #: The gateway's config when it has a catalog (serve/control/catalog.py), paths absolute.
    catalog: dict[str, Any] | None = None
    limits: Limits
    telemetry: TelemetrySpec
    auth: AuthConfig | None = None


@serve.deployment
class ModelVersion:
    """One (model, version): an ONNX Runtime session, warmed up before the replica is ready."""

    async def __init__(self, spec: dict[str, Any], telemetry: dict[str, Any]) -> None:  # type: ignore[misc]
        version = VersionSpec.model_validate(spec)
        self.name = f"{version.model}:{version.version}"
        self.telemetry = TelemetrySpec.model_validate(telemetry).start()
        runtime = open_runtime(version.artifact, version.intra_op_threads)
        runtime.warm_up()
        self._run = self.telemetry.instrument(runtime, version.model, version.version)
        self.direct: DirectServer | None = None
        if version.direct:
            context = serve.get_replica_context()
            key = kv_prefix(context.app_name, context.deployment) + context.replica_id.unique_id
            metrics = self.telemetry.metrics
            refused = metrics.direct_refused
            answered = metrics.counter(
                metrics.direct_batches.labels(
                    version.model, version.version, context.replica_id.unique_id
                )
            )
            run = self._run

            def run_direct(feeds: Feeds) -> Feeds:
                answered.inc()
                return run(feeds)

            directory = KVDirectory()
            self.direct = DirectServer(
                run_direct,
                directory,
                key,
                directory.shared_secret(context.app_name),
                _frame_limits(runtime, version),
                lambda reason: refused.labels(version.model, version.version, reason).inc(),
            )
            await self.direct.start(ray.util.get_node_ip_address())
        self._stopping = False

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the routers said they hold for this version (serve/ray/autoscale.py reads it):
        Ray Serve calls it every metrics interval."""
        if self.direct is None:
            return {}
        return self.direct.demand.stats(time.monotonic())

    async def run(self, feeds: Feeds, remaining_s: float | None = None) -> Feeds:
        """A batch from a router's handle call, with the time it had left when sent."""
        if remaining_s is not None and remaining_s <= 0:
            raise expired(self.name)
        return self._run(feeds)

    def __del__(self) -> Any:
        """Ray Serve calls it when it stops the replica, on the replica's event loop, and awaits
        what it returns: the direct transport's drain (serve/transport/direct.py), so that a
        scale-down or rollout fails no batch. Called again later by the garbage collector, or
        first without a running loop, it just closes."""
        if getattr(self, "_stopping", True):  # already stopping, or never fully built
            return None
        self._stopping = True
        direct = getattr(self, "direct", None)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if direct is not None:
                direct.close()
            _close_telemetry(self)
            return None
        return self._drain(direct)

    async def _drain(self, direct: DirectServer | None) -> None:
        if direct is not None:
            await direct.drain(notice_s=2 * ROUTER_REFRESH_S)
        _close_telemetry(self)


@serve.deployment
class Router:
    """The ingress: decodes HTTP/gRPC, routes, batches per version, encodes."""

    def __init__(self, spec: dict[str, Any], handles: dict[str, DeploymentHandle]) -> None:
        self.spec = RouterSpec.model_validate(spec)
        self.limits = self.spec.limits
        self.admission = Admission(self.spec.max_requests)
        self.codec_limits = CodecLimits(max_elements=self.limits.max_elements)
        self.telemetry = self.spec.telemetry.start()
        self.pools: dict[str, DirectPool] = {}
        if any(v.direct for v in self.spec.versions):
            app = serve.get_replica_context().app_name
            directory = KVDirectory()
            secret = directory.shared_secret(app)
            for v in self.spec.versions:
                if v.direct and v.deployment is not None:
                    self.pools[v.deployment] = DirectPool(
                        v.deployment, directory, kv_prefix(app, v.deployment), secret
                    )
        targets = [
            _target(version, handles, self.telemetry, self.pools) for version in self.spec.versions
        ]
        auth = Authenticator(self.spec.auth) if self.spec.auth is not None else None
        self.plane = DataPlane.build(
            targets, self.spec.registry_aliases, self.telemetry.metrics, auth, self.spec.follows
        )
        self.plane.registry = self.spec.registry
        dedicated = {
            v.deployment: t.health
            for v, t in zip(self.spec.versions, targets, strict=True)
            if v.deployment is not None
        }
        self.health = DeploymentHealth(dedicated, list(self.pools.values())) if dedicated else None
        self.grpc = InferenceServicer(
            self.plane, self.admission, self.limits.max_body_bytes, self.codec_limits
        )
        self._cpu_mark = (time.monotonic(), time.process_time())  # for record_autoscaling_stats
        self.delivery = DeliverySync(
            serve.get_replica_context().app_name, self.plane, self.spec.telemetry.metrics
        )
        self.catalog: CatalogWatch | None = None
        if self.spec.catalog is not None:
            config = GatewayConfig.model_validate(self.spec.catalog)
            self.catalog = CatalogWatch(
                serve.get_replica_context().app_name,
                config,
                self.plane,
                self.telemetry,
                ROUTER_REFRESH_S,
            )

        self.lean: list[LeanListener | LeanGrpcListener] = []
        if lean.ingress() == "lean":  # this node's routers serve on listeners of their own
            replica = serve.get_replica_context().replica_id.unique_id
            host = http_host()

            def add_services(server: Any) -> None:  # the RPCs below, as Ray's ingress calls them
                grpc_codec.add_servicer(self, server)  # bytes in: undecodable is INVALID_ARGUMENT

            self.lean = [
                LeanListener(self.__call__, host, lean.lean_port(replica)),
                LeanGrpcListener(
                    add_services,
                    host,
                    lean.lean_port(replica, "grpc"),
                    self.limits.max_body_bytes,  # as Ray's (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE)
                ),
            ]
            for listener in self.lean:
                listener.start()

    def __del__(self) -> Any:
        """Ray Serve calls it when it stops the replica (after its own drain), on the replica's
        event loop, and awaits what it returns: the lean listener's drain, so that a rollout
        or a scale-down fails no request. Called again by the garbage collector, or first
        without a running loop, it just stops."""
        if getattr(self, "_stopped", False):
            return None
        self._stopped = True
        listeners = getattr(self, "lean", [])
        if listeners:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                for listener in listeners:
                    listener.close()
            else:
                return self._drain(listeners)
        self._stop()
        return None

    async def _drain(self, listeners: list[LeanListener | LeanGrpcListener]) -> None:
        await asyncio.gather(*(listener.drain() for listener in listeners))
        self._stop()

    def _stop(self) -> None:
        for task in (getattr(self, "delivery", None), getattr(self, "catalog", None)):
            if task is not None:
                task.stop()
        _close_telemetry(self)
        health = getattr(self, "health", None)
        if health is not None:
            health.stop()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Routing from the deployment's user_config: applied in place, no restart.

        Idempotent (Ray may call it again with the same config). A config naming versions that
        are not deployed raises, and the routing in force stays as it was.
        """
        routing = RoutingConfig.model_validate(user_config or {})
        delivering = sorted(m for m, r in routing.models.items() if r.delivery is not None)
        if delivering and self.spec.telemetry.metrics.port is None:
            raise ValueError(
                f"delivery ({', '.join(delivering)}) reads every node's exporter: "
                "metrics.port must be set"
            )
        self.plane.apply_routing(routing)
        self.delivery.configured = True

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The share of a core this router replica's process used since Ray last asked (the
        router's autoscaling policy reads it: serve/ray/autoscale.py)."""
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return {autoscale.BUSY: (cpu - last_cpu) / max(wall - last_wall, 1e-3)}

    # -- HTTP ---------------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Response:
        """One HTTP request, from Ray Serve's ingress or the lean listener."""
        if not self.admission.enter():
            return rest.error_response(self.admission.refusal())
        try:
            return await rest.handle(self.plane, request, self.limits)
        finally:
            self.admission.leave()

    # -- gRPC: the service's RPCs, answered by the servicer (serve/protocol/grpc_servicer.py) --
    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ServerLive(request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ServerReady(request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ServerMetadata(request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ModelReady(request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ModelMetadata(request, grpc_context)

    async def ModelStatistics(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ModelStatistics(request, grpc_context)

    async def RepositoryIndex(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.RepositoryIndex(request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Message:
        return await self.grpc.ModelInfer(request, grpc_context)


class DeliverySync:
    """Keeps one router's delivering models where the delivery controller has them
    (serve/control/delivery.py): each `ROUTER_REFRESH_S` it publishes what its routing config
    desires when that changed, starts the controller if none runs, and applies the records'
    routing. A task on the router's event loop; the KV calls run in a thread, so a request
    never waits on them."""

    #: Seconds between checks that the controller runs.
    ENSURE_S = 10.0
    #: Seconds a router with no routing config waits before publishing it has no delivery (Ray
    #: calls reconfigure just after __init__ when the deployment has a user_config).
    UNCONFIGURED_S = 10.0

    def __init__(self, app: str, plane: DataPlane, metrics: MetricsConfig) -> None:
        from serve.control.delivery import Store

        self.app, self.plane, self.metrics = app, plane, metrics
        self.store = Store(app, KVDirectory())
        self._published: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._ensured = 0.0
        self._started = time.monotonic()
        self.configured = False  # set once reconfigure applied the routing config
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                logger.warning("could not sync deliveries", exc_info=True)
            await asyncio.sleep(ROUTER_REFRESH_S)

    async def sync(self) -> None:
        if not self.configured and time.monotonic() - self._started < self.UNCONFIGURED_S:
            return  # before its routing config, a router would publish no delivery at all
        desired, follows = self.plane.deliveries(), self.plane.follows()
        if (desired, follows) != self._published:
            await asyncio.to_thread(self.store.publish_desired, desired)
            await asyncio.to_thread(self.store.publish_follows, follows)
            self._published = (desired, follows)
        if not desired and not follows:
            return
        if time.monotonic() - self._ensured > self.ENSURE_S:
            await asyncio.to_thread(self._ensure)
            self._ensured = time.monotonic()
        self.plane.apply_records(await asyncio.to_thread(self.store.records))

    def _ensure(self) -> None:
        import os

        from serve.ray.delivery import ensure_controller

        port = self.metrics.port
        assert port is not None  # reconfigure refuses a delivery without the exporters
        env = {MULTIPROC_ENV: os.environ[MULTIPROC_ENV]} if MULTIPROC_ENV in os.environ else {}
        ensure_controller(self.app, self.metrics.host, port, env)

    def stop(self) -> None:
        self._task.cancel()


def _frame_limits(runtime: VersionRuntime, version: VersionSpec) -> FrameLimits:
    """What a router's batch of this version can be (a BYTES input never travels direct)."""
    inputs = {
        spec.name: (spec.numpy_dtype, tuple(spec.shape))
        for spec in runtime.manifest.signature.inputs
        if spec.datatype != "BYTES"
    }
    return FrameLimits(inputs, version.batching.max_batch_rows, version.max_elements)


def ray_limits(max_requests: int) -> dict[str, int]:
    """Ray Serve's own limits on a router replica, above modelgate's admission: what Ray
    itself refuses (plain-text 503 / RESOURCE_EXHAUSTED) is only past these."""
    return {
        "max_ongoing_requests": max_requests + max_requests // 4 + 64,
        "max_queued_requests": max_requests,
    }


# `@serve.deployment` turns each class into a Deployment; mypy sees only the class.
RouterDeployment = cast(Deployment, Router)
CatalogPoolDeployment = cast(Deployment, CatalogPool)
ModelVersionDeployment = cast(Deployment, ModelVersion)


#: Seconds between a router's reads of its versions' health and direct endpoints.
ROUTER_REFRESH_S = 1.0


def _close_telemetry(replica: object) -> None:
    telemetry = getattr(replica, "telemetry", None)  # absent if __init__ failed before it
    if telemetry is not None:
        telemetry.close()


class DeploymentHealth(threading.Thread):
    """Keeps each dedicated version's Health current from Ray Serve's own status: a version
    that had a RUNNING replica and has none now, or whose replicas fail to start (a corrupt or
    missing artifact, say), takes no traffic until one runs again. Polled every `interval_s`
    in a thread, so the request path only reads a flag."""

    def __init__(
        self,
        versions: dict[str, Health],
        pools: list[DirectPool],
        interval_s: float = ROUTER_REFRESH_S,
    ) -> None:
        super().__init__(name="modelgate-health", daemon=True)
        self.versions = versions
        self.pools = pools
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._seen_running: set[str] = set()
        self.start()

    def run(self) -> None:
        app = serve.get_replica_context().app_name
        while True:
            try:
                self.poll(app)
            except Exception:  # the controller restarting, say: keep the last known state
                logger.warning("could not read Ray Serve's status", exc_info=True)
            for pool in self.pools:  # the direct transport's endpoints, from Ray's KV
                try:
                    pool.refresh()
                except Exception:
                    logger.warning("could not list %s's endpoints", pool.name, exc_info=True)
            if self._stopped.wait(self.interval_s):
                return

    def poll(self, app: str) -> None:
        details = serve_details()  # raises while no controller runs
        deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
        for deployment, health in self.versions.items():
            overview = deployments.get(deployment)
            running = (
                sum(_is(r.get("state"), "RUNNING") for r in overview["replicas"]) if overview else 0
            )
            if running > 0:
                health.ready, health.reason = True, ""
                self._seen_running.add(deployment)
            elif overview is None:
                # Not in the status (an application whose new config failed to build lists
                # none, while the running deployments serve on): keep what was last known.
                continue
            elif deployment in self._seen_running or any(
                _is(overview["status"], s) for s in ("UNHEALTHY", "DEPLOY_FAILED")
            ):
                message = str(overview.get("message") or "").strip()[:500]
                health.ready = False
                health.reason = (
                    f"deployment {deployment} has no running replica "
                    f"({_value(overview['status'])}" + (f": {message}" if message else "") + ")"
                )
            # else: its first replicas are starting; requests wait for them (up to their
            # deadline) rather than fail while the application comes up.

    def stop(self) -> None:
        self._stopped.set()


def _value(field: Any) -> str:
    """An enum member's value (the details dict holds Ray's enums) or the string itself."""
    return str(getattr(field, "value", field))


def _is(field: Any, expected: Any) -> bool:
    return _value(field) == _value(expected)


def _target(
    spec: VersionSpec,
    handles: dict[str, DeploymentHandle],
    telemetry: ReplicaTelemetry,
    pools: dict[str, DirectPool] | None = None,
) -> VersionTarget:
    name = f"{spec.model}:{spec.version}"
    health = Health()
    try:
        manifest = local_manifest(spec.artifact)
    except ArtifactError as exc:
        # Nothing to validate requests against: this version answers 503, the others serve.
        logger.error("%s is not served: %s", name, exc)
        reason = f"its manifest cannot be had: {exc}"
        unknown = _unknown_manifest(spec)
        batcher = MicroBatcher(name, runners.unavailable(name, reason))
        return VersionTarget(
            spec.model, spec.version, unknown, batcher, spec.placement, None, Health(False, reason)
        )
    run_now = None
    pool = None  # the version's direct transport, when it has one
    if spec.placement == "colocated":
        try:
            run_now = _local_run(spec, telemetry)
            run = runners.local(run_now)
        except ArtifactError as exc:
            # This version is not served; the router and every other version are.
            logger.error("%s is not served: %s", name, exc)
            health = Health(False, f"its artifact cannot be loaded: {exc}")
            run = runners.unavailable(name, health.reason)
    else:
        assert spec.deployment is not None
        m = telemetry.metrics
        transports: list[tuple[runners.Transport, runners.Counter]] = []
        pool = (pools or {}).get(spec.deployment)
        if pool is not None:
            taken = m.transport_batches.labels(spec.model, spec.version, "direct")
            transports.append((pool, m.counter(taken)))
        taken = m.transport_batches.labels(spec.model, spec.version, "handle")
        transports.append((HandleTransport(name, handles[spec.deployment]), m.counter(taken)))
        run = runners.dedicated(name, transports)
    b = spec.batching
    batcher = MicroBatcher(
        name,
        run,
        max_batch_rows=b.max_batch_rows,
        max_wait_s=b.max_wait_ms / 1000,
        max_in_flight=b.max_in_flight,
        max_queued=b.max_queued,
        on_batch=telemetry.metrics.batch_observer(spec.model, spec.version),
        run_now=run_now,
        replicas=None if pool is None else pool.live,
        target_s=None if b.target_p99_ms is None else b.target_p99_ms / 1000,
        on_pace=(
            None
            if b.target_p99_ms is None
            else telemetry.metrics.pacing_observer(spec.model, spec.version)
        ),
    )
    if pool is not None:  # each frame tells the replica what this router holds (autoscaling)
        pool.report = lambda: (batcher.demand, batcher.stats.shed)
    timeout_s = None if spec.timeout_ms is None else spec.timeout_ms / 1000
    return VersionTarget(
        spec.model,
        spec.version,
        manifest,
        batcher,
        spec.placement,
        timeout_s,
        health,
        allow_non_finite=spec.allow_non_finite,
    )


def _unknown_manifest(spec: VersionSpec) -> Manifest:
    """What stands for a manifest that could not be had: no inputs, no outputs."""
    return Manifest(
        name=spec.model,
        version=spec.version,
        source_uri="",
        registry="",
        flavor="",
        source_sha256="",
        sha256=spec.artifact.sha256,
        signature=Signature(inputs=[], outputs=[]),
        task="",
        opset={},
        converter={},
        created_at="",
    )


def _local_run(spec: VersionSpec, telemetry: ReplicaTelemetry) -> Callable[[Feeds], Feeds]:
    runtime = open_runtime(spec.artifact, spec.intra_op_threads)
    runtime.warm_up()
    return telemetry.instrument(runtime, spec.model, spec.version)


class HandleTransport:
    """Ray Serve's handle to a dedicated version, as a runners.Transport: it always takes the
    batch. A handle call still unanswered at the deadline is cancelled (Ray Serve drops it if the
    replica has not started it); a replica that died with the batch on it is tried again, once;
    Ray's back-pressure is OVERLOADED, and any other failure UNAVAILABLE."""

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self.handle = handle

    async def run(self, feeds: Feeds, deadline: float | None) -> Feeds:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        name = self.name
        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            remaining = time_left(name, deadline)
            timeout = asyncio.timeout(remaining)
            try:
                async with timeout:
                    return await self.handle.run.remote(feeds, remaining)  # type: ignore[no-any-return]
            except TimeoutError as exc:
                if timeout.expired():
                    raise expired(name) from None
                raise InferenceError(
                    ErrorCode.UNAVAILABLE, f"{name} is unavailable: {exc}"
                ) from exc
            except InferenceError:
                raise
            except RayActorError as exc:
                # The replica died (or went unreachable) with the batch on it. Ray Serve stops
                # routing to it at once, and a prediction is a pure function of its inputs:
                # send the batch again, to another replica (or the restarted one).
                if attempt == REPLICA_ATTEMPTS:
                    raise InferenceError(
                        ErrorCode.UNAVAILABLE,
                        f"{name} is unavailable: its replicas stopped {attempt} times while "
                        f"answering ({type(exc).__name__})",
                        retry_after_s=1.0,
                    ) from exc
                logger.warning("%s: a replica stopped while answering; sending again", name)
            except BackPressureError as exc:
                raise InferenceError(
                    ErrorCode.OVERLOADED, f"{name} is overloaded: {exc}", retry_after_s=1.0
                ) from exc
            except Exception as exc:
                raise InferenceError(
                    ErrorCode.UNAVAILABLE, f"{name} is unavailable: {exc}"
                ) from exc
        raise AssertionError("unreachable")


# -- the builder ------------------------------------------------------------------------------
def build_app(args: dict[str, Any] | GatewayConfig) -> serve.Application:
    """Ray Serve application builder: `import_path: serve.app:build_app`.

    The args are validated here (a ValidationError names each bad field), then every version is
    resolved to a verified artifact; a config that cannot be served fails the deploy.
    """
    return build_gateway(args, RouterDeployment)


def build_gateway(args: dict[str, Any] | GatewayConfig, ingress: Deployment) -> serve.Application:
    """`build_app` with another ingress deployment, one taking the Router's arguments (the
    benchmark's floor, `loadtests.floor:floor_app`, is a Router answering like the baseline)."""
    args = args if isinstance(args, GatewayConfig) else GatewayConfig.model_validate(args)
    resolved = resolve_versions(args, FollowStore(KVDirectory()))
    refs = distribute.pin(args, resolved)
    distribute.check_reachable(args, refs, nodes=sum(1 for n in ray.nodes() if n["Alive"]))
    telemetry = TelemetrySpec(metrics=args.metrics, drift=args.drift)
    handles: dict[str, Any] = {}
    specs: list[VersionSpec] = []
    for (model, version_config, _, version, _), artifact in zip(resolved, refs, strict=True):
        dedicated = version_config.placement == "dedicated"
        spec = VersionSpec(
            model=model.name,
            version=version,
            artifact=artifact,
            placement=version_config.placement,
            batching=version_config.batching,
            intra_op_threads=version_config.intra_op_threads,
            deployment=f"{model.name}-v{version}" if dedicated else None,
            timeout_ms=model.timeout_ms,
            allow_non_finite=model.allow_non_finite,
            max_elements=args.limits.max_elements,
            direct=version_config.direct,
        )
        if spec.deployment is not None:
            handles[spec.deployment] = _model_deployment(
                spec.deployment, version_config, args
            ).bind(spec.model_dump(), telemetry.model_dump())
        specs.append(spec)
    catalog = _catalog_spec(args)
    if args.catalog is not None and args.catalog.pool is not None:
        pool = args.catalog.pool
        handles[POOL] = CatalogPoolDeployment.options(
            name=POOL,
            num_replicas=pool.num_replicas,
            ray_actor_options=_actor_options(pool.num_cpus, args, None),
        ).bind(catalog)
    router = args.router
    router_spec = RouterSpec(
        max_requests=router.max_ongoing_requests,
        versions=specs,
        registry_aliases=registry_aliases(resolved),
        follows=follows(args, resolved),
        registry=args.registry,
        catalog=catalog,
        limits=args.limits,
        telemetry=telemetry,
        auth=args.auth,
    )
    options: dict[str, Any] = {
        **ray_limits(router.max_ongoing_requests),
        "ray_actor_options": _actor_options(router.num_cpus, args, router.nodes),
        "max_surge_percent": router.max_surge_percent,
        **_scaling(
            router.autoscaling,
            router.num_replicas,
            {
                "policy_function": autoscale.ROUTER_POLICY,
                "policy_kwargs": {"target_busy": router.target_busy},
            },
        ),
        **(router.nodes.deployment_options() if router.nodes is not None else {}),
    }
    return ingress.options(**options).bind(router_spec.model_dump(), handles)


def _catalog_spec(args: GatewayConfig) -> dict[str, Any] | None:
    """The config the catalog's actor works from (serve/ray/catalog.py), its folders absolute:
    the actor's working directory is not the deploy's."""
    if args.catalog is None:
        return None
    catalog = args.catalog
    if catalog.artifacts is not None:
        catalog = catalog.model_copy(update={"artifacts": str(Path(catalog.artifacts).resolve())})
    update = {"models": [], "catalog": catalog, "artifacts": str(Path(args.artifacts).resolve())}
    return args.model_copy(update=update).model_dump(mode="json")


def _model_deployment(name: str, version: VersionConfig, args: GatewayConfig) -> Any:
    router_replicas = (
        args.router.autoscaling.max_replicas
        if args.router.autoscaling
        else args.router.num_replicas
    )
    options: dict[str, Any] = {
        "name": name,
        # Each router keeps at most max_in_flight batches on a version at once.
        "max_ongoing_requests": version.batching.max_in_flight * router_replicas + 2,
        "ray_actor_options": _actor_options(version.num_cpus, args, version.nodes),
        "max_surge_percent": version.max_surge_percent,
        **_scaling(
            version.autoscaling,
            version.num_replicas,
            {"policy_function": autoscale.POLICY} if version.direct else None,
        ),
        **(version.nodes.deployment_options() if version.nodes is not None else {}),
    }
    return ModelVersionDeployment.options(**options)


def _actor_options(num_cpus: float, args: GatewayConfig, nodes: Nodes | None) -> dict[str, Any]:
    """Every replica writes its metrics to the node's folder (serve/observe/exporter.py); the
    variable must be set before the worker imports prometheus-client, hence the runtime_env.
    `nodes` becomes Ray's label selector and its fallbacks."""
    directory = args.metrics.directory or str(Path(session_dir()) / "modelgate-metrics")
    env = {MULTIPROC_ENV: directory}
    options = {"num_cpus": num_cpus, "runtime_env": {"env_vars": env}}
    return options | (nodes.ray_options() if nodes is not None else {})


def _scaling(
    autoscaling: Autoscaling | None, num_replicas: int, policy: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ray Serve takes either an autoscaling_config or a fixed num_replicas; `policy`: the
    autoscaling policy, when Ray's own count would not see the load (serve/ray/autoscale.py):
    a version reached over the direct transport, or the router."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    config: dict[str, Any] = autoscaling.ray_config()
    if policy is not None:
        config["policy"] = policy
    return {"autoscaling_config": config}


def follows(args: GatewayConfig, resolved: list[Resolved]) -> dict[str, Follow]:
    """Each model that follows a registry alias: the alias, and the version the registry moved
    it to when that one is deployed to be delivered."""
    from converters.registry import ModelRef, open_registry

    out: dict[str, Follow] = {}
    for model, version_config, _, version, role in resolved:
        if role and version_config.uri is not None:
            alias = ModelRef.parse(version_config.uri).alias
            assert alias is not None
            if model.name not in out:
                location = open_registry(args.registry).location
                out[model.name] = Follow(alias=alias, registry=location)
            if role == "candidate":
                out[model.name].candidate = version
    return out


def registry_aliases(resolved: list[Resolved]) -> dict[str, dict[str, str]]:
    """`uri: models:/m@champion` pins alias `champion` to the version it named at deploy time."""
    from converters.registry import ModelRef

    aliases: dict[str, dict[str, str]] = {}
    for model, version_config, _, version, role in resolved:
        if version_config.uri is not None and role != "candidate":
            alias = ModelRef.parse(version_config.uri).alias
            if alias is not None:
                aliases.setdefault(model.name, {})[alias] = version
    return aliases
