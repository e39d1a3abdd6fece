"""The gateway's configuration: the `args` of a Ray Serve application whose import_path is
`serve.app:build_app`. Validated by pydantic when Serve builds the application, so a bad config
fails `serve deploy` / `serve run` with the field and the problem named, before anything changes.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve.core.auth import AuthConfig
from serve.core.delivery import DeliveryPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Batching(_Strict):
    """How requests for one version coalesce (see serve/core/batching.py)."""

    max_batch_rows: int = Field(256, ge=1, le=65536, description="Most rows in one run.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Hold a batch open this long for more requests. 0: leave as soon as a call "
        "slot is free; requests arriving while calls run still coalesce.",
    )
    max_in_flight: int = Field(
        2,
        ge=1,
        le=64,
        description="Batches running at once, per router; for a dedicated version on the direct "
        "transport, per router and per live replica, so each replica it scales to adds capacity.",
    )
    max_queued: int = Field(1024, ge=1, description="Requests queued per router before shedding.")
    target_p99_ms: float | None = Field(
        None,
        gt=0,
        le=600_000,
        description="A latency target for answered requests, from the router's queue to the "
        "answer (serve/core/pacing.py): batches hold only the rows that fit half of it, fewer "
        "batches stay in flight while calls run long, and a request whose answer would come "
        "later is shed at once with 503 + Retry-After / UNAVAILABLE rather than left to age in "
        "the queue. null: the static bounds above alone.",
    )


class Autoscaling(_Strict):
    """Passed through to Ray Serve's autoscaling_config."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    metrics_interval_s: float = Field(10.0, gt=0)
    look_back_period_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self

    def ray_config(self) -> dict[str, float | int]:
        return self.model_dump()


#: A Ray node label key (Kubernetes' syntax: an optional DNS prefix and '/', then a name).
_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
#: A selector's value: `v`, `!v`, `in(a,b)` or `!in(a,b)` (Ray 2.60's label selectors).
_LABEL_VALUE = r"^!?(in\([-A-Za-z0-9_., ]*\)|[-A-Za-z0-9_.]{0,63})$"


def _check_selector(selector: dict[str, str], where: str) -> None:
    for key, value in selector.items():
        if not re.match(_LABEL_KEY, key):
            raise ValueError(f"{where}: {key!r} is not a node label key")
        if not re.match(_LABEL_VALUE, value):
            raise ValueError(
                f"{where}[{key}]: {value!r} is not a label selector value "
                "(value, !value, in(a,b) or !in(a,b))"
            )


def _anywhere() -> list[dict[str, str]]:
    return [{}]


class Nodes(_Strict):
    """Which nodes a replica may run on, by the labels each node was started with
    (`ray start --labels role=model`; KubeRay sets them from the group's `rayStartParams`)."""

    labels: dict[str, str] = Field(
        default_factory=dict,
        description="The labels a node must have (Ray's label_selector): `key: value`, "
        "`key: '!value'`, `key: in(a,b)`; {} any node.",
    )
    fallback: list[dict[str, str]] = Field(
        default_factory=_anywhere,
        description="Selectors tried in order when no node with `labels` can take the "
        "replica (Ray's fallback_strategy). The default, [{}], falls back to any node, so a "
        "replica lost with its node comes back on another; [] keeps it to `labels` only.",
    )
    max_per_node: int | None = Field(
        None,
        ge=1,
        description="At most this many of these replicas on one node (Ray Serve's "
        "max_replicas_per_node); 1 spreads them, so that losing a node never loses them all. "
        "null: no limit.",
    )

    @model_validator(mode="after")
    def _valid(self) -> Nodes:
        _check_selector(self.labels, "labels")
        for i, selector in enumerate(self.fallback):
            _check_selector(selector, f"fallback[{i}]")
        return self

    def deployment_options(self) -> dict[str, object]:
        """The deployment's options that say so (beside `ray_options`)."""
        if self.max_per_node is None:
            return {}
        return {"max_replicas_per_node": self.max_per_node}

    def ray_options(self) -> dict[str, object]:
        """The replica's ray_actor_options that say so."""
        if not self.labels:
            return {}
        return {
            "label_selector": dict(self.labels),
            "fallback_strategy": [{"label_selector": dict(s)} for s in self.fallback],
        }


class VersionConfig(_Strict):
    """One deployed version of a model."""

    uri: str | None = Field(
        None,
        description="Registry URI, e.g. models:/name/3 or @alias; "
        "converted (or taken from the artifact cache) at deploy time.",
    )
    artifact: str | None = Field(None, description="An artifact folder (model.onnx + manifest).")
    placement: Literal["dedicated", "colocated"] = Field(
        "dedicated",
        description="dedicated: its own autoscaling replicas behind the router; "
        "colocated: inside the router replicas (for light models).",
    )
    transport: Literal["auto", "direct", "handle"] = Field(
        "auto",
        description="How the router reaches dedicated replicas. handle: Ray Serve's handle "
        "call (~1-2.5 ms a call here); direct: a persistent TCP connection to each replica "
        "(~0.1 ms; serve/transport/direct.py), falling back to the handle on any transport "
        "failure; "
        "auto: direct (an autoscaling version scales on the demand its routers report in their "
        "frames: serve/ray/autoscale.py).",
    )
    batching: Batching = Field(default_factory=Batching)
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is not set.")
    autoscaling: Autoscaling | None = None
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads.")
    max_surge_percent: int = Field(
        100, ge=0, le=100, description="As RouterConfig.max_surge_percent, for this version."
    )
    num_cpus: float = Field(
        0.1,
        ge=0,
        description="Logical CPUs each replica reserves in Ray's scheduler. Small by "
        "default so many versions fit a small node; raise it to spread replicas across nodes.",
    )
    nodes: Nodes | None = Field(None, description="The nodes its replicas run on (dedicated).")
    follow: bool = Field(
        False,
        description="With `uri: models:/<m>@<alias>`: follow the alias. When it moves in the "
        "registry, the delivery controller has the application rebuilt: the new version is "
        "converted and verified (in the control plane), deployed beside the one serving, and "
        "delivered under the model's `delivery` policy (defaults if none); promoted, the "
        "alias moves in the gateway; rolled back, it is put back in the registry.",
    )

    @property
    def direct(self) -> bool:
        """Whether the router sends batches over the direct transport (dedicated only)."""
        return self.placement == "dedicated" and self.transport != "handle"

    @model_validator(mode="after")
    def _one_source(self) -> VersionConfig:
        if (self.uri is None) == (self.artifact is None):
            raise ValueError("give exactly one of 'uri' (a registry model URI) or 'artifact'")
        if self.follow and (self.uri is None or "@" not in self.uri):
            raise ValueError("follow: needs a 'uri' naming an alias (models:/<name>@<alias>)")
        return self


class ModelConfig(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="Model name in the protocol (letters, digits, '_', '.', '-'; not '.' or "
        "'..': it names folders in artifact stores and caches).",
    )
    versions: list[VersionConfig] = Field(min_length=1)
    timeout_ms: float | None = Field(
        30_000,
        gt=0,
        description="Default deadline of a request, from routing to its answer; a request "
        "may ask for less with the `timeout` parameter (microseconds). Past it: 504 / "
        "DEADLINE_EXCEEDED, and a request still queued is dropped before compute. null: none.",
    )
    allow_non_finite: bool = Field(
        False,
        description="Take NaN and infinities in float inputs (binary or gRPC; JSON has none). "
        "false: refused with 400 / INVALID_ARGUMENT naming the input, since most models answer "
        "NaN with a confident but meaningless prediction.",
    )

    @model_validator(mode="after")
    def _one_followed(self) -> ModelConfig:
        if sum(v.follow for v in self.versions) > 1:
            raise ValueError(f"model '{self.name}': at most one version may follow an alias")
        return self

    @field_validator("name")
    @classmethod
    def _not_a_path_step(cls, name: str) -> str:
        if name in (".", ".."):
            raise ValueError(f"{name!r} cannot name a model: it is a step in a folder path")
        return name


class RouterConfig(_Strict):
    num_replicas: int = Field(1, ge=1)
    autoscaling: Autoscaling | None = Field(
        None,
        description="Router replicas scale on the CPU they use (serve/ray/autoscale.py): "
        "Σ busy / target_busy; its target_ongoing_requests is not used.",
    )
    target_busy: float = Field(
        0.7,
        gt=0,
        le=4,
        description="With autoscaling: the share of a core each router replica may keep busy "
        "before another is added (its event loop is one thread: about 1 is all one can do).",
    )
    max_ongoing_requests: int = Field(
        4096,
        ge=1,
        description="Requests a router replica holds at once (being read, queued or computed); "
        "one more is refused at once with 503 + Retry-After / UNAVAILABLE by modelgate. Ray "
        "Serve's own limit on the replica is set above it (1.25x + 64, and as many queued), so "
        "Ray itself refuses (plain-text 503, gRPC RESOURCE_EXHAUSTED) only past that.",
    )
    num_cpus: float = Field(0.1, ge=0, description="Logical CPUs each router replica reserves.")
    nodes: Nodes | None = Field(None, description="The nodes router replicas run on.")
    max_surge_percent: int = Field(
        100,
        ge=0,
        le=100,
        description="Extra replicas a rolling restart may start before it "
        "stops old ones (Ray Serve's max_surge_percent). 100: new replicas are ready first.",
    )


class Limits(_Strict):
    max_body_bytes: int = Field(64 << 20, ge=1024, description="Largest request body (413).")
    max_elements: int = Field(1 << 24, ge=1, description="Largest tensor, in elements.")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a request's body may take to arrive once its head has: a slower "
        "sender gets 408 and its slot back. (The head itself: 10 s, in HAProxy.)",
    )


class MetricsConfig(_Strict):
    """Where the node's metrics (all replicas on a node, summed) can be scraped."""

    port: int | None = Field(
        9464,
        ge=1,
        le=65535,
        description="Node exporter port on every node running gateway replicas (one replica "
        "per node serves it; null: off). /metrics on the HTTP port answers as well.",
    )
    host: str = Field("0.0.0.0", description="Address the node exporter binds.")
    directory: str | None = Field(
        None,
        description="Node-local folder where replicas write their metric values "
        "(prometheus-client multiprocess mode). null: `modelgate-metrics` in the Ray session's "
        "own folder, so a new session starts from zero and two Ray instances on one machine "
        "never write into each other's.",
    )


class DriftConfig(_Strict):
    """Input drift scores per version and feature (serve/observe/drift.py)."""

    enabled: bool = True
    window_s: float = Field(300.0, gt=0, description="Live rows scored: those of this window.")
    interval_s: float = Field(5.0, gt=0, description="Scores refresh this often.")
    min_rows: int = Field(100, ge=1, description="Rows the window needs before it is scored.")
    max_rows_per_interval: int = Field(
        20_000, ge=1, description="Rows kept per interval and replica; more are not scored."
    )

    @model_validator(mode="after")
    def _window(self) -> DriftConfig:
        if self.interval_s > self.window_s:
            raise ValueError(f"interval_s {self.interval_s} > window_s {self.window_s}")
        return self


class CatalogPool(_Strict):
    """A deployment of its own for the catalog's models (`CatalogPool` in the application):
    each model is placed on one pool replica by rendezvous hashing over them, each replica
    keeping `max_resident` sessions; router replicas then hold none (they decode, validate,
    route and batch, and send each batch to the pool replica its model is placed on)."""

    num_replicas: int = Field(2, ge=1, description="Pool replicas.")
    max_resident: int = Field(
        64, ge=1, description="Sessions a pool replica keeps loaded; LRU beyond (pinned never)."
    )
    max_loading: int = Field(2, ge=1, description="Loads a pool replica runs at once.")
    max_pending_loads: int = Field(
        64,
        ge=1,
        description="Loads a pool replica lets wait; a batch for one more cold model is shed "
        "at once (503 with Retry-After).",
    )
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs each pool replica reserves.")


class CatalogConfig(_Strict):
    """Models served from a catalog that changes in place (serve/control/catalog.py): added,
    removed and re-pointed without restarting a replica, their sessions loaded on first use
    and kept within a budget per router replica (serve/core/resident.py)."""

    alias: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_\-]+$",
        description="Every model of the registry that carries this alias (say `production`) is "
        "in the catalog, at the version the alias names: converted and verified in the control "
        "plane, re-read every `refresh_s`. Moving the alias re-points the model; removing it "
        "removes the model.",
    )
    artifacts: str | None = Field(
        None,
        description="A folder of converted artifacts (<any>/model.onnx + manifest.json, at "
        "any depth): each is in the catalog under its manifest's name and version; every "
        "version found is served, the highest on the default route. Re-read every `refresh_s`.",
    )
    also: list[str] = Field(
        [],
        description="With `alias`: more registry aliases (say `challenger`) whose versions are "
        "served beside the alias's, addressable by version and alias, for the routing config's "
        "weights, sticky splits and shadow (`models.<m>` in the Router's user_config). The "
        "default route stays on `alias`.",
    )
    delivery: DeliveryPolicy | None = Field(
        None,
        description="With `alias`: when the alias moves to another version of a model, that "
        "version is delivered under this policy (the alias being the stable one; `stable` and "
        "`candidate` left out), promoted or rolled back by its own metrics, and a rollback puts "
        "the registry's alias back. Unset: a moved alias re-points the model at once. A model "
        "whose routing config sets its own `delivery`, `weights` or `shadow` is routed as that "
        "says instead. Needs `metrics.port`.",
    )
    max_resident: int = Field(
        32,
        ge=1,
        description="Sessions a router replica keeps loaded; least recently used "
        "beyond it are dropped (pinned ones never).",
    )
    max_loading: int = Field(2, ge=1, description="Loads a router replica runs at once.")
    placement: Literal["hashed", "everywhere"] = Field(
        "hashed",
        description="hashed: each model is placed on one router replica (rendezvous hashing "
        "over the replicas; a router that receives a request for a model placed elsewhere "
        "sends its batch there over the direct transport), so N replicas hold about N × "
        "max_resident models; everywhere: every replica loads what it is asked for.",
    )
    max_pending_loads: int = Field(
        64,
        ge=1,
        description="Loads a router replica lets wait; a request for one more cold model is "
        "shed at once (503 with Retry-After).",
    )
    pinned: list[str] = Field(
        [], description="Models loaded when a router starts and never evicted (hot models)."
    )
    batching: Batching = Field(default_factory=Batching)
    timeout_ms: float | None = Field(
        30_000, gt=0, description="Default deadline of a catalog model's request (as models')."
    )
    drift: bool = Field(
        False,
        description="Input drift monitors for catalog models (a score series per input "
        "feature of each model: off by default, for thousands of models).",
    )
    refresh_s: float = Field(5.0, ge=0.5, description="Seconds between reads of the source.")
    pool: CatalogPool | None = Field(
        None,
        description="Run the catalog's models on a pool of replicas of their own, with their "
        "own budget (`pool.max_resident` each), rather than on the router replicas "
        "(`max_resident`, `max_loading`, `max_pending_loads` and `placement` then do not "
        "apply: the pool places each model on one of its replicas).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CatalogConfig:
        if self.alias is None and self.artifacts is None:
            raise ValueError("catalog: set 'alias' (a registry alias) or 'artifacts' (a folder)")
        if self.alias is None and (self.also or self.delivery is not None):
            raise ValueError("catalog: 'also' and 'delivery' follow registry aliases: set 'alias'")
        if self.alias in self.also:
            raise ValueError(f"catalog.also: '{self.alias}' is the catalog's alias already")
        if self.delivery is not None and (self.delivery.stable or self.delivery.candidate):
            raise ValueError(
                "catalog.delivery: leave 'stable' and 'candidate' out: the alias is the stable "
                "one, the version it moved to the candidate"
            )
        return self


class GatewayConfig(_Strict):
    """`args` of the application."""

    models: list[ModelConfig] = Field([])
    catalog: CatalogConfig | None = Field(
        None,
        description="Models served from a catalog that changes in place, lazily loaded within "
        "a budget (the 'Many models' section of the README). Beside `models` or instead.",
    )
    registry: str | None = Field(None, description="Registry for 'uri' versions.")
    artifacts: str = Field(".modelgate/artifacts", description="Artifact store folder.")
    distribute: Literal["auto", "registry", "local"] = Field(
        "auto",
        description="How replicas on every node get the artifacts (serve/control/distribute.py). "
        "registry: each verified artifact is published to the registry's MLflow server "
        "(modelgate/artifacts/<model>/<version>-<key>/ in its artifact store) and fetched once "
        "per node into a local cache, checked against the sha256 pinned at deploy; local: "
        "replicas read `artifacts` in place; auto: registry when the registry is an MLflow "
        "server (http://…), else local.",
    )
    shared_artifacts: bool = Field(
        False,
        description="`artifacts` is on storage every node mounts at the same path: deploy local "
        "artifacts on a cluster of several nodes (refused otherwise).",
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    limits: Limits = Field(default_factory=Limits)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    auth: AuthConfig | None = Field(
        None, description="API keys (serve/core/auth.py); null: every endpoint is open."
    )
    revision: str | None = Field(
        None,
        description="Set by the alias follower when a followed alias moves: Ray Serve rebuilds "
        "an application only when its config changes. Any value; leave it to the follower.",
    )

    @model_validator(mode="after")
    def _some_model(self) -> GatewayConfig:
        if not self.models and self.catalog is None:
            raise ValueError("models: list at least one model, or set a catalog")
        return self

    @model_validator(mode="after")
    def _catalog_delivery(self) -> GatewayConfig:
        c = self.catalog
        if c is not None and c.alias is not None and self.registry is None:
            raise ValueError("catalog.alias names a registry alias: set 'registry'")
        if c is not None and c.delivery is not None and self.metrics.port is None:
            raise ValueError(
                "catalog.delivery reads every node's exporter: metrics.port must be set"
            )
        return self

    @model_validator(mode="after")
    def _unique_models(self) -> GatewayConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return self
