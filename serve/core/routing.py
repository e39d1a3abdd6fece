"""Which version answers a request: a pinned version, an alias, or the weighted default route.

Routing lives in the Router's `user_config` (Ray Serve's `reconfigure`), so changing weights or
aliases with `serve deploy` takes effect in place, without restarting any replica.

Sticky assignment uses weighted rendezvous hashing: each version scores a key as
`weight / -ln(u)`, with `u` a hash of (key, version) in (0, 1); the highest score wins. The same
key always lands on the same version for a given weight table, and when weights move, keys move
only towards versions whose weight grew (from 90/10 to 80/20, only keys leave the first version,
and about 10% of them: the keys that must).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Collection

from pydantic import BaseModel, ConfigDict, Field

from serve.core import delivery
from serve.core.delivery import DeliveryPolicy, Record
from serve.core.errors import not_found
from serve.core.shadow import ShadowConfig

DEFAULT_STICKY_HEADER = "x-routing-key"


class ModelRouting(BaseModel):
    """Routing for one model (a key of `RoutingConfig.models`)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Default route: version or alias -> weight (any positive scale, e.g. 90/10). "
        "Empty: the highest deployed version takes all traffic.",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="alias -> version, on top of the registry aliases pinned at deploy time.",
    )
    sticky_header: str = Field(
        DEFAULT_STICKY_HEADER,
        description="Request header (gRPC metadata key) whose value pins a caller to a version.",
    )
    shadow: ShadowConfig | None = Field(
        None, description="Copy a sample of this model's requests to another version."
    )
    delivery: DeliveryPolicy | None = Field(
        None,
        description="Progressive delivery (serve/core/delivery.py): a candidate takes the "
        "default route step by step, judged by its own metrics, rolled back on a breach. While "
        "set, it decides the weights and the shadow: leave those two unset.",
    )


class Follow(BaseModel):
    """A model that follows a registry alias (serve/control/follow.py), as built."""

    model_config = ConfigDict(extra="forbid")

    alias: str
    registry: str  # the registry's location
    candidate: str | None = None  # the version the alias moved to, deployed to be delivered


class RoutingConfig(BaseModel):
    """The Router deployment's `user_config`."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelRouting] = Field(default_factory=dict)


class Delivery:
    """A model's delivery as one router applies it."""

    def __init__(self, policy: DeliveryPolicy, names: delivery.Resolved, id: str) -> None:
        self.policy, self.names, self.id = policy, names, id
        self.record: Record | None = None

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "stable": self.names.stable,
            "candidate": self.names.candidate,
            "phase": None if self.record is None else self.record.phase,
            "step": None if self.record is None else self.record.step,
            "candidate_percent": delivery.share(self.policy, self.record),
        }


class RouteTable:
    """One model's routing, compiled and checked against the versions actually deployed."""

    delivery: Delivery | None = None

    def __init__(
        self,
        model: str,
        versions: list[str],
        routing: ModelRouting,
        registry_aliases: dict[str, str] | None = None,
        record: Record | None = None,
        follow: Follow | None = None,
        default: str | None = None,
    ) -> None:
        """`default`: the version on the default route when the routing sets no weights (the
        highest version if None)."""
        self.model = model
        self.versions = list(versions)
        self.aliases = {**(registry_aliases or {}), **routing.aliases}
        self.sticky_header = routing.sticky_header.lower()
        for alias, version in self.aliases.items():
            if version not in self.versions:
                raise ValueError(
                    f"model '{model}': alias '{alias}' points to version {version}, which is not "
                    f"deployed (deployed: {', '.join(self.versions)})"
                )
        self.follow = follow
        if follow is not None:
            routing = _following(routing, follow)
        if routing.delivery is not None:
            routing = self._deliver(routing, routing.delivery, record)
        raw = routing.weights or {default or _highest(self.versions): 1.0}
        weights: dict[str, float] = {}
        for name, weight in raw.items():
            version = self.aliases.get(name, name)
            if version not in self.versions:
                raise ValueError(
                    f"model '{model}': weights name '{name}', which is neither a deployed "
                    f"version ({', '.join(self.versions)}) nor an alias"
                )
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"model '{model}': weight of '{name}' must be >= 0, got {weight}")
            weights[version] = weights.get(version, 0.0) + weight
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"model '{model}': weights must not all be zero")
        self.weights = {v: w / total for v, w in weights.items() if w > 0}
        self._cumulative = _cumulative(self.weights)
        self.shadow = routing.shadow
        self.shadow_version: str | None = None
        if routing.shadow is not None:
            self.shadow_version = self.aliases.get(routing.shadow.version, routing.shadow.version)
            if self.shadow_version not in self.versions:
                raise ValueError(
                    f"model '{model}': shadow version '{routing.shadow.version}' is neither a "
                    f"deployed version ({', '.join(self.versions)}) nor an alias"
                )

    def _deliver(
        self, routing: ModelRouting, policy: DeliveryPolicy, record: Record | None
    ) -> ModelRouting:
        """The routing the delivery's record allows: weights, shadow and a promoted alias."""
        if routing.weights or routing.shadow is not None:
            raise ValueError(
                f"model '{self.model}': delivery decides the weights and the shadow; "
                "leave 'weights' and 'shadow' unset beside it"
            )
        names = delivery.resolve(policy, self.versions, self.aliases, self.model)
        self.delivery = Delivery(policy, names, policy.identity(names.stable, names.candidate))
        if record is not None and record.id != self.delivery.id:
            record = None  # another policy's record: this one has not started
        self.delivery.record = record
        weights, shadowed, moved = delivery.routes(policy, names, record)
        self.aliases.update(moved)
        shadow = None
        if shadowed is not None:
            shadow = ShadowConfig(version=shadowed, ratio=policy.shadow_ratio)
        return routing.model_copy(update={"weights": weights, "shadow": shadow})

    def resolve(self, requested: str) -> str:
        """A pinned version or an alias, as named in the request."""
        version = self.aliases.get(requested, requested)
        if version not in self.versions:
            known = self.versions + sorted(self.aliases)
            raise not_found(
                f"model '{self.model}' has no version or alias '{requested}'; "
                f"known: {', '.join(known)}"
            )
        return version

    def pick(
        self,
        key: str | None,
        ready: Collection[str] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> str | None:
        """The default route: sticky by key when one is given, else weighted at random.

        `ready`: the versions that may take traffic (None: all). A version not in it gets none;
        its share goes to the others in proportion to their weights, and keys pinned to it
        move as rendezvous hashing moves them (the others' keys stay). None if none is left.
        """
        weights, cumulative = self.weights, self._cumulative
        if ready is not None and not all(v in ready for v in weights):
            weights = {v: w for v, w in weights.items() if v in ready}
            if not weights:
                return None
            total = sum(weights.values())
            cumulative = _cumulative({v: w / total for v, w in weights.items()})
        if key is not None:
            return max(weights, key=lambda v: _score(key, v, weights[v]))
        r = rand()
        for version, bound in cumulative:
            if r < bound:
                return version
        return cumulative[-1][0]

    def describe(self) -> dict[str, object]:
        return {
            "versions": self.versions,
            "aliases": self.aliases,
            "weights": {v: round(w, 6) for v, w in self.weights.items()},
            "sticky_header": self.sticky_header,
            "shadow": None
            if self.shadow is None
            else {
                "version": self.shadow_version,
                "ratio": self.shadow.ratio,
                "max_in_flight": self.shadow.max_in_flight,
                "log_path": self.shadow.log_path,
            },
            "delivery": None if self.delivery is None else self.delivery.describe(),
        }


def compile_routing(
    versions: dict[str, list[str]],
    registry_aliases: dict[str, dict[str, str]],
    routing: RoutingConfig,
    records: dict[str, Record] | None = None,
    follows: dict[str, Follow] | None = None,
    defaults: dict[str, str] | None = None,
) -> dict[str, RouteTable]:
    """Every deployed model's route table; ValueError if the routing names what is not deployed.
    `records`: each delivering model's record, as the delivery controller left it; `defaults`:
    a model's version on the default route when its routing sets no weights."""
    unknown = sorted(set(routing.models) - set(versions))
    if unknown:
        raise ValueError(f"routing names models that are not deployed: {', '.join(unknown)}")
    return {
        name: RouteTable(
            name,
            deployed,
            routing.models.get(name, ModelRouting()),
            registry_aliases.get(name),
            (records or {}).get(name),
            (follows or {}).get(name),
            (defaults or {}).get(name),
        )
        for name, deployed in versions.items()
    }


def _following(routing: ModelRouting, follow: Follow) -> ModelRouting:
    """A followed alias: the version it moved to is delivered under the model's policy (its
    defaults if it has none), the alias being the stable one; with nothing to deliver, the
    alias takes the default route unless the routing says otherwise."""
    policy = routing.delivery
    if follow.candidate is not None:
        policy = policy or DeliveryPolicy(stable=follow.alias)
        update = {"stable": follow.alias, "candidate": follow.candidate}
        return routing.model_copy(update={"delivery": policy.model_copy(update=update)})
    if policy is not None and policy.candidate is None:  # the follower's: nothing to deliver
        policy = None
    if policy is None and not routing.weights:
        return routing.model_copy(update={"delivery": None, "weights": {follow.alias: 1.0}})
    return routing.model_copy(update={"delivery": policy})


def _highest(versions: list[str]) -> str:
    return max(versions, key=lambda v: (int(v) if v.isdigit() else -1, v))


def _cumulative(weights: dict[str, float]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for version, weight in weights.items():
        total += weight
        out.append((version, total))
    return out


def _score(key: str, version: str, weight: float) -> float:
    digest = hashlib.blake2b(f"{key}\x00{version}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1)
    return weight / -math.log(u)
