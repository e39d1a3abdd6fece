"""The transport-neutral data plane: what the gateway answers, whatever the protocol.

`DataPlane.infer` is the request path in one place:
    pick the version (pinned, alias, weighted/sticky default route) → validate against its
    signature → dispatch to the version's batcher → copy to the shadow (sampled, never awaited)
    → run → select and encode outputs.
REST (serve/protocol/rest.py) and gRPC (serve/protocol/grpc_codec.py) only convert to and from
these calls.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from converters.manifest import Manifest
from serve.core.auth import Access, Authenticator
from serve.core.batching import MicroBatcher
from serve.core.delivery import DeliveryPolicy, Record
from serve.core.errors import ErrorCode, InferenceError, invalid, not_found
from serve.core.routing import (
    Follow,
    ModelRouting,
    RouteTable,
    RoutingConfig,
    compile_routing,
)
from serve.core.shadow import ShadowRunner
from serve.core.types import InferRequest, InferResponse, Tensor
from serve.core.validation import validate
from serve.observe.metrics import GatewayMetrics

logger = logging.getLogger("modelgate")

SERVER_NAME = "modelgate"


def _installed_version() -> str:
    """The package's version (pyproject.toml), as installed; a checkout run without installing
    says so rather than naming a version it may not be."""
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


SERVER_VERSION = _installed_version()
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
PLATFORM = "onnx_onnxv1"


@dataclass
class Health:
    """Whether a version takes traffic now, and if not, why (kept current by its owner:
    serve/ray/app.py polls Ray Serve's status for dedicated versions)."""

    ready: bool = True
    reason: str = ""


@dataclass
class VersionTarget:
    """One servable version as the router sees it."""

    model: str
    version: str
    manifest: Manifest
    batcher: MicroBatcher
    placement: str
    timeout_s: float | None = None  # the model's default deadline
    health: Health = field(default_factory=Health)
    allow_non_finite: bool = False  # NaN and infinities in float inputs


class CatalogControl(Protocol):
    """Triton's model control, mapped to the catalog (serve/ray/catalog.py: CatalogWatch)."""

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...

    def describe(self, model: str) -> dict[str, Any]:
        """Where the model is: whether this replica holds its session, and the router replica
        it is placed on."""
        ...


@dataclass
class ModelEntry:
    """A model's deployed versions, and the route table the current routing config compiled."""

    versions: dict[str, VersionTarget]
    registry_aliases: dict[str, str]
    table: RouteTable
    follow: Follow | None = None
    default: str | None = None  # the default route's version when the routing sets no weights


@dataclass
class CatalogModel:
    """A catalog model as a router builds it (serve/ray/catalog.py): its versions, the
    registry's aliases for them, the default route's version, and the alias it follows (with
    the version that alias moved to, while that one is delivered)."""

    versions: dict[str, VersionTarget]
    aliases: dict[str, str]
    default: str | None = None
    follow: Follow | None = None


def _routed_by_operator(routing: ModelRouting | None) -> bool:
    """The operator's routing decides the model's default route itself (weights or a shadow,
    no delivery): a catalog delivery does not apply to it."""
    if routing is None or routing.delivery is not None:
        return False
    return bool(routing.weights) or routing.shadow is not None


def _held(follow: Follow, routing: ModelRouting | None) -> Follow:
    """A followed alias whose model the operator routes itself: the version it moved to serves
    as any version, undelivered, while that routing holds."""
    if follow.candidate is not None and _routed_by_operator(routing):
        return follow.model_copy(update={"candidate": None})
    return follow


class DataPlane:
    def __init__(
        self,
        models: dict[str, ModelEntry],
        metrics: GatewayMetrics | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics or GatewayMetrics()
        self.auth = auth
        self.shadows: dict[str, ShadowRunner] = {}
        self.routing = RoutingConfig()  # as the operator's config last set it
        self.registry: str | None = None  # the registry `uri` versions come from
        self.records: dict[str, Record] = {}
        self.catalog: CatalogControl | None = None
        self.catalog_models: set[str] = set()  # models that came from the catalog
        # A catalog model's delivery when its alias moves, unless the routing config sets one.
        self.catalog_policy: DeliveryPolicy | None = None
        self._published_aliases: dict[str, dict[str, str]] = {}
        for name, entry in models.items():  # counters exist at 0 from the start (for rate())
            for version in entry.versions:
                self.metrics.shed.labels(name, version)
                self.metrics.timeouts.labels(name, version)
        self.instance = uuid.uuid4().hex  # tells a reconfigured replica from a restarted one

    @classmethod
    def build(
        cls,
        targets: list[VersionTarget],
        registry_aliases: dict[str, dict[str, str]],
        metrics: GatewayMetrics | None = None,
        auth: Authenticator | None = None,
        follows: dict[str, Follow] | None = None,
    ) -> DataPlane:
        """Group versions by model; every model starts on its default routing."""
        grouped: dict[str, dict[str, VersionTarget]] = {}
        for target in targets:
            grouped.setdefault(target.model, {})[target.version] = target
        entries = {}
        for model, versions in grouped.items():
            aliases = registry_aliases.get(model, {})
            follow = (follows or {}).get(model)
            table = RouteTable(model, list(versions), ModelRouting(), aliases, None, follow)
            entries[model] = ModelEntry(versions, aliases, table, follow)
        plane = cls(entries, metrics, auth)
        plane._publish_routing()
        return plane

    def apply_routing(
        self, routing: RoutingConfig, records: dict[str, Record] | None = None
    ) -> None:
        """Compile and check every model's routing, then switch to it all at once. `records`:
        the deliveries' records (serve/core/delivery.py); None keeps those last applied.

        Raises ValueError (and changes nothing) if any part names what is not deployed.
        """
        records = self.records if records is None else records
        tables = self._compile(self._effective(routing), records, self.models)
        self.routing, self.records = routing, records
        for runner in self.shadows.values():  # first: a new runner may reopen the same log
            runner.close()
        for name, table in tables.items():
            self.models[name].table = table
        self.shadows = {
            name: self._shadow(name, table)
            for name, table in tables.items()
            if table.shadow is not None
        }
        self._publish_routing()

    def _compile(
        self, routing: RoutingConfig, records: dict[str, Record], models: Mapping[str, ModelEntry]
    ) -> dict[str, RouteTable]:
        return compile_routing(
            {name: list(entry.versions) for name, entry in models.items()},
            {name: entry.registry_aliases for name, entry in models.items()},
            routing,
            records,
            {
                name: _held(entry.follow, routing.models.get(name))
                for name, entry in models.items()
                if entry.follow
            },
            {name: entry.default for name, entry in models.items() if entry.default},
        )

    def _effective(self, routing: RoutingConfig) -> RoutingConfig:
        """The operator's routing as it applies with a catalog: a catalog model whose alias
        moved is delivered under the catalog's policy unless the routing sets its own delivery,
        weights or shadow for it (the operator's routing wins); names
        the deployment does not have yet are left for when the catalog lists them."""
        if self.catalog is None and not self.catalog_models:
            return routing
        models = {n: r for n, r in routing.models.items() if n in self.models}
        if self.catalog_policy is not None:
            for name in self.catalog_models:
                follow = self.models[name].follow
                if follow is not None and follow.candidate is not None:
                    own = models.get(name, ModelRouting())
                    if own.delivery is None and not _routed_by_operator(own):
                        models[name] = own.model_copy(update={"delivery": self.catalog_policy})
        return RoutingConfig(models=models)

    def update_catalog(self, added: dict[str, CatalogModel], removed: set[str]) -> None:
        """Catalog models added, changed (in `added` again) or removed, in place: the other
        models' entries, batchers and sessions are untouched. A config model of the same name
        wins over a catalog one. A model the routing config no longer fits (it names a version
        or alias the catalog took away) takes the default route, said in the log."""
        gone = removed & self.catalog_models
        for name in gone:
            self.catalog_models.discard(name)
            del self.models[name]
        built: dict[str, ModelEntry] = {}
        for name, model in added.items():
            if name in self.models and name not in self.catalog_models:
                continue
            versions = model.versions
            placeholder = RouteTable(name, list(versions), ModelRouting(), model.aliases)
            built[name] = ModelEntry(
                versions, model.aliases, placeholder, model.follow, model.default
            )
            self.catalog_models.add(name)  # its series appear with its first request
        self.models.update(built)
        routing = self._effective(self.routing)
        for name, entry in built.items():
            own = {name: routing.models[name]} if name in routing.models else {}
            try:
                (entry.table,) = self._compile(
                    RoutingConfig(models=own), self.records, {name: entry}
                ).values()
            except ValueError as exc:
                logger.error("catalog model '%s' takes the default route: %s", name, exc)
                (entry.table,) = self._compile(
                    RoutingConfig(), self.records, {name: entry}
                ).values()
        for name in set(built) | gone:
            runner = self.shadows.pop(name, None)
            if runner is not None:
                runner.close()
            now = self.models.get(name)
            if now is not None and now.table.shadow is not None:
                self.shadows[name] = self._shadow(name, now.table)
        self._publish_routing(set(built) | gone)

    def _shadow(self, name: str, table: RouteTable) -> ShadowRunner:
        assert table.shadow is not None and table.shadow_version is not None
        target = self.models[name].versions[table.shadow_version]
        return ShadowRunner(name, target, table.shadow, self.metrics)

    def apply_records(self, records: dict[str, Record]) -> bool:
        """The delivery controller's records changed: the routing they allow, now. False (and
        nothing changes) when no delivering model's record did."""
        changed = False
        for name, entry in self.models.items():
            d = entry.table.delivery
            if d is not None:
                record = records.get(name)
                applies = record is not None and record.id == d.id
                changed |= d.record != (record if applies else None)
        if not changed:
            return False
        self.apply_routing(self.routing, records)
        return True

    def deliveries(self) -> dict[str, Any]:
        """What the routers must tell the delivery controller: each delivering model's policy
        and the versions it resolved to (serve/control/delivery.py reads them)."""
        out: dict[str, Any] = {}
        for name, entry in self.models.items():
            d = entry.table.delivery
            if d is not None and d.names.stable != d.names.candidate:
                follow = entry.follow
                out[name] = {
                    "follow": None if follow is None else follow.model_dump(),
                    "registry": self.registry,
                    "stable_alias": d.names.stable_alias,
                    "candidate_unready": _unready(entry.versions[d.names.candidate]),
                    "id": d.id,
                    "policy": d.policy.model_dump(mode="json"),
                    "stable": d.names.stable,
                    "candidate": d.names.candidate,
                    "sources": {
                        v: entry.versions[v].manifest.source_uri
                        for v in (d.names.stable, d.names.candidate)
                    },
                }
        return out

    def follows(self) -> dict[str, Any]:
        """Each model following a registry alias, as built (the delivery controller watches
        the registry for them)."""
        return {
            n: e.follow.model_dump()
            for n, e in self.models.items()
            if e.follow is not None and n not in self.catalog_models  # the catalog follows its own
        }

    def _publish_routing(self, only: set[str] | None = None) -> None:
        """Weights and aliases as gauges, so dashboards can put canary and stable side by side."""
        for name, entry in self.models.items():
            if only is not None and name not in only:
                continue
            table = entry.table
            for version in entry.versions:
                self.metrics.route_weight.labels(name, version).set(table.weights.get(version, 0))
            for alias, version in self._published_aliases.get(name, {}).items():
                self.metrics.alias.labels(name, alias, version).set(0)
            for alias, version in table.aliases.items():
                self.metrics.alias.labels(name, alias, version).set(1)
            self._published_aliases[name] = dict(table.aliases)

    def routes(self) -> dict[str, Any]:
        models = {name: entry.table.describe() for name, entry in sorted(self.models.items())}
        return {"router": self.instance, "models": models}

    def authorize(self, access: Access, authorization: str | None, model: str | None) -> None:
        """Raises 401/403 unless the credentials allow `access` (always allowed without auth)."""
        if self.auth is not None:
            self.auth.check(access, authorization, model)

    def visible_models(self, authorization: str | None) -> list[str]:
        """Every model without auth; with it, the models the caller's key may use."""
        if self.auth is None:
            return list(self.models)
        return self.auth.visible(authorization, list(self.models))

    def check_known(self, model: str, version: str | None, protocol: str) -> None:
        """404 for a model or version not deployed: before a body is read or decoded, so that
        an unknown model is NOT_FOUND whatever its inputs. Counted as `infer` counts one."""
        try:
            entry = self._entry(model)
            if version:
                entry.table.resolve(version)
        except InferenceError as exc:
            known = model if model in self.models else ""
            count, _ = self.metrics.request_series(known, "", protocol, exc.code.value)
            count.inc()
            raise

    # -- the request path --------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Answer one request, counted and timed per (model, version, protocol, code)."""
        started = time.monotonic()
        model = request.model if request.model in self.models else ""  # no series per typo
        version, code = "", "ok"
        in_flight = self.metrics.in_flight_of(model)
        in_flight.inc()
        try:
            target = self.target(request.model, request.version, request.headers, ready=True)
            version = target.version
            return await self._infer(request, target)
        except InferenceError as exc:
            code = exc.code.value
            if exc.code is ErrorCode.OVERLOADED:
                self.metrics.shed.labels(model, version).inc()
            elif exc.code is ErrorCode.DEADLINE_EXCEEDED:
                self.metrics.timeouts.labels(model, version).inc()
            raise
        except Exception:
            code = ErrorCode.INTERNAL.value
            raise
        finally:
            in_flight.dec()
            count, duration = self.metrics.request_series(model, version, request.protocol, code)
            count.inc()
            duration.observe(time.monotonic() - started)

    async def _infer(self, request: InferRequest, target: VersionTarget) -> InferResponse:
        feeds, rows = validate(request, target.manifest.signature, target.allow_non_finite)
        shadow = self.shadows.get(request.model)
        timeout_s = deadline_s(request, target.timeout_s)
        outputs = None if shadow is not None else target.batcher.try_now(feeds, rows)
        if outputs is None:
            outputs = await self._wait(request, target, shadow, feeds, rows, timeout_s)
        return _response(request, target, outputs)

    async def _wait(
        self,
        request: InferRequest,
        target: VersionTarget,
        shadow: ShadowRunner | None,
        feeds: dict[str, np.ndarray],
        rows: int,
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        """The batcher's answer within the request's deadline."""
        deadline = asyncio.timeout(timeout_s)
        ends = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            async with deadline:  # a request still queued is dropped before compute
                if shadow is None:
                    return await target.batcher.submit(feeds, rows, ends)
                return await self._with_shadow(shadow, request, target, feeds, rows, ends)
        except TimeoutError:
            if not deadline.expired():  # not ours
                raise
            raise _late(target, timeout_s) from None
        except InferenceError as exc:
            # The batch found every request in it past its deadline (serve/ray/app.py): this one
            # too.
            if exc.code is ErrorCode.DEADLINE_EXCEEDED and timeout_s is not None:
                raise _late(target, timeout_s) from None
            raise

    @staticmethod
    async def _with_shadow(
        shadow: ShadowRunner,
        request: InferRequest,
        target: VersionTarget,
        feeds: dict[str, np.ndarray],
        rows: int,
        ends: float | None,
    ) -> dict[str, np.ndarray]:
        """The primary is dispatched first (the copy's task starts only when this one yields);
        the copy learns the primary's answer through `answer`, and is never awaited here."""
        answer: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        shadow.maybe_copy(request, target, feeds, answer)
        try:
            outputs = await target.batcher.submit(feeds, rows, ends)
        except BaseException as exc:
            answer.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            answer.exception()  # retrieved here: the copy may not be waiting for it
            raise
        answer.set_result(outputs)
        return outputs

    # -- metadata and health -----------------------------------------------------------------
    def target(
        self,
        model: str,
        version: str | None,
        headers: Mapping[str, str] | None = None,
        ready: bool = False,
    ) -> VersionTarget:
        """The version a request names, or its model's default route picks among the versions
        that are ready. `ready`: raise UNAVAILABLE rather than return a version that is not."""
        entry = self._entry(model)
        table = entry.table
        if version:
            target = entry.versions[table.resolve(version)]
            if ready and not target.health.ready:
                raise _unavailable(target)
            return target
        # A route of one version needs no key: whatever a key says, that version answers.
        key = None if len(table.weights) == 1 else (headers or {}).get(table.sticky_header)
        picked = table.pick(key)
        if picked is not None and entry.versions[picked].health.ready:
            return entry.versions[picked]  # the common case: no set of ready versions to build
        # Picking again among the ready ones gives what picking among them at once would: a
        # key's rendezvous winner, or a draw over their renormalised weights.
        picked = table.pick(key, {v for v, t in entry.versions.items() if t.health.ready})
        if picked is not None:
            return entry.versions[picked]
        if ready:
            raise InferenceError(
                ErrorCode.UNAVAILABLE,
                f"model '{model}': no version on its default route is ready ("
                + "; ".join(f"{v}: {entry.versions[v].health.reason}" for v in table.weights)
                + ")",
                retry_after_s=1.0,
            )
        configured = table.pick(None)  # for metadata: the route as configured
        assert configured is not None
        return entry.versions[configured]

    def _entry(self, model: str) -> ModelEntry:
        entry = self.models.get(model)
        if entry is None:
            raise not_found(
                f"unknown model '{model}'; models are: {', '.join(sorted(self.models))}"
            )
        return entry

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        target = self.target(model, version)
        signature = target.manifest.signature
        return {
            "name": model,
            "versions": sorted(self.models[model].versions, key=_version_order),
            "platform": PLATFORM,
            "inputs": [t.model_dump() for t in signature.inputs],
            "outputs": [t.model_dump() for t in signature.outputs],
        }

    def model_ready(self, model: str, version: str | None) -> bool:
        """A named version: whether it is ready; no version: whether the default route can
        answer (some version on it is ready)."""
        if version:
            return self.target(model, version).health.ready
        self.target(model, None)  # 404 for an unknown model
        entry = self.models[model]
        return any(entry.versions[v].health.ready for v in entry.table.weights)

    def server_ready(self) -> bool:
        """Ready when every model's default route can answer: a version that is not ready
        (say, a canary whose artifact is broken) takes no traffic, so it does not make the
        server unready while the rest of its route is."""
        return all(self.model_ready(name, None) for name in self.models)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every deployed version and its state (`ready_only`: the READY ones)."""
        index = []
        for name, entry in sorted(self.models.items()):
            for version in sorted(entry.versions, key=_version_order):
                target = entry.versions[version]
                row: dict[str, Any] = {"name": name, "version": version}
                if target.health.ready:
                    row["state"] = "READY"
                elif ready_only:
                    continue
                else:
                    row |= {"state": "UNAVAILABLE", "reason": target.health.reason}
                if name in self.catalog_models and self.catalog is not None:
                    # Servable, loaded on first use: where it is (serve/ray/catalog.py).
                    row |= {"catalog": True, **self.catalog.describe(name)}
                index.append(row)
        return index

    def statistics_targets(self, model: str | None, version: str | None) -> list[VersionTarget]:
        """The versions Triton's statistics extension reports on (serve/observe/statistics.py):
        every
        version, a model's, or one (404 for an unknown model or version)."""
        if not model:
            return [t for r in self.models.values() for t in r.versions.values()]
        if not version:
            self.target(model, None)
            return list(self.models[model].versions.values())
        return [self.target(model, version)]


def _late(target: VersionTarget, timeout_s: float | None) -> InferenceError:
    return InferenceError(
        ErrorCode.DEADLINE_EXCEEDED,
        f"model '{target.model}' version {target.version}: no answer within the "
        f"request's deadline of {(timeout_s or 0) * 1000:g} ms",
    )


def _unavailable(target: VersionTarget) -> InferenceError:
    return InferenceError(
        ErrorCode.UNAVAILABLE,
        f"model '{target.model}' version {target.version} is not ready: {target.health.reason}",
        retry_after_s=1.0,
    )


def _response(
    request: InferRequest, target: VersionTarget, outputs: dict[str, np.ndarray]
) -> InferResponse:
    signature = target.manifest.signature
    wanted = request.outputs
    if not wanted:  # every output, in the signature's order: the common case
        tensors = [Tensor(s.name, s.datatype, outputs[s.name]) for s in signature.outputs]
        binary = {t.name: True for t in tensors} if request.binary_output else {}
    else:
        tensors = []
        for requested in wanted:
            spec = signature.output(requested.name)
            assert spec is not None  # validated
            tensors.append(Tensor(spec.name, spec.datatype, outputs[spec.name]))
        binary = {o.name: request.binary_output if o.binary is None else o.binary for o in wanted}
    return InferResponse(
        model=request.model,
        version=target.version,
        outputs=tensors,
        id=request.id,
        binary=binary,
    )


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def deadline_s(request: InferRequest, default_s: float | None) -> float | None:
    """The request's `timeout` parameter (microseconds, as Triton's clients send it), capped by
    the model's default deadline."""
    value = request.parameters.get("timeout")
    if value is None:
        return default_s
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise invalid(
            f"parameter 'timeout' must be a positive number of microseconds; got {value!r}"
        )
    requested = value / 1e6
    return requested if default_s is None else min(requested, default_s)


def _unready(target: VersionTarget) -> str:
    """Why a version takes no traffic (its replicas failed to start, or all stopped); "" if
    it is ready, or its first replicas are still starting."""
    return "" if target.health.ready else target.health.reason or "not ready"
