from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from serve.core.batching import MicroBatcher
from serve.core.dataplane import CatalogModel, DataPlane, Health, VersionTarget
from serve.core.delivery import DeliveryPolicy
from serve.core.errors import ErrorCode, InferenceError
from serve.core.routing import DEFAULT_STICKY_HEADER as KEY
from serve.core.routing import Follow, ModelRouting, RouteTable, RoutingConfig
from serve.core.shadow import ShadowConfig
from tests.serve import factories


def _table(weights: dict[str, float], **kw: object) -> RouteTable:
    return RouteTable("m", ["1", "2", "3"], ModelRouting(weights=weights, **kw))  # type: ignore


def test_weighted_split_honours_weights_within_two_points() -> None:
    table = _table({"1": 90, "2": 10})
    rng = random.Random(7)
    counts = Counter(table.pick(None, rand=rng.random) for _ in range(10_000))
    assert abs(counts["1"] / 10_000 - 0.90) <= 0.02
    assert abs(counts["2"] / 10_000 - 0.10) <= 0.02
    assert counts["3"] == 0


def test_three_way_split_and_aliases_in_weights() -> None:
    table = _table({"stable": 50, "canary": 30, "3": 20}, aliases={"stable": "1", "canary": "2"})
    rng = random.Random(3)
    counts = Counter(table.pick(None, rand=rng.random) for _ in range(10_000))
    for version, share in (("1", 0.5), ("2", 0.3), ("3", 0.2)):
        assert abs(counts[version] / 10_000 - share) <= 0.02


def test_sticky_keys_stay_and_spread_by_weight() -> None:
    table = _table({"1": 90, "2": 10})
    keys = [f"user-{i}" for i in range(10_000)]
    first = {k: table.pick(k) for k in keys}
    assert all(table.pick(k) == first[k] for k in keys[:500])  # same key, same version
    share = sum(v == "2" for v in first.values()) / len(keys)
    assert abs(share - 0.10) <= 0.02


def test_moving_weights_moves_only_the_keys_that_must_move() -> None:
    before, after = _table({"1": 90, "2": 10}), _table({"1": 80, "2": 20})
    keys = [f"user-{i}" for i in range(10_000)]
    moved = [(before.pick(k), after.pick(k)) for k in keys if before.pick(k) != after.pick(k)]
    assert all(move == ("1", "2") for move in moved)  # nobody leaves the version that grew
    assert abs(len(moved) / len(keys) - 0.10) <= 0.02  # about the 10 points that changed hands


def test_default_route_is_the_highest_version() -> None:
    assert _table({}).pick(None) == "3"


def test_resolve_versions_and_aliases() -> None:
    table = RouteTable(
        "m", ["1", "2"], ModelRouting(aliases={"canary": "2"}), registry_aliases={"champion": "1"}
    )
    assert table.resolve("canary") == "2" and table.resolve("champion") == "1"
    assert table.resolve("1") == "1"
    with pytest.raises(InferenceError) as info:
        table.resolve("9")
    assert info.value.http_status == 404 and "known: 1, 2, canary, champion" in info.value.message


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        (ModelRouting(aliases={"canary": "7"}), "alias 'canary' points to version 7"),
        (ModelRouting(weights={"9": 1}), "weights name '9'"),
        (ModelRouting(weights={"1": 0}), "must not all be zero"),
        (ModelRouting(weights={"1": -1}), "must be >= 0"),
    ],
)
def test_bad_routing_is_refused_with_the_reason(routing: ModelRouting, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RouteTable("m", ["1", "2"], routing)


def test_a_version_not_ready_gets_no_traffic_and_its_share_spreads_by_weight() -> None:
    table = _table({"1": 60, "2": 30, "3": 10})
    rng = random.Random(5)
    counts = Counter(table.pick(None, {"1", "3"}, rng.random) for _ in range(10_000))
    assert counts["2"] == 0
    assert abs(counts["1"] / 10_000 - 60 / 70) <= 0.02  # 60 of the 70 left
    keys = [f"user-{i}" for i in range(5_000)]
    moved = [k for k in keys if table.pick(k) != table.pick(k, {"1", "3"})]
    assert all(table.pick(k) == "2" for k in moved)  # only the keys of version 2 move
    assert table.pick(None, set()) is None and table.pick("k", {"9"}) is None


def _plane(versions: list[str], routing: ModelRouting) -> DataPlane:
    targets = [
        VersionTarget("m", v, factories.manifest(v), MicroBatcher(f"m:{v}", _never), "colocated")
        for v in versions
    ]
    plane = DataPlane.build(targets, {})
    plane.apply_routing(RoutingConfig(models={"m": routing}))
    return plane


async def _never(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    raise AssertionError("routing runs nothing")


def test_the_default_route_reads_the_sticky_key_only_when_it_has_a_choice() -> None:
    one = _plane(["1", "2"], ModelRouting(weights={"2": 1}))
    assert {one.target("m", None, {KEY: f"u{i}"}).version for i in range(50)} == {"2"}
    one.models["m"].versions["2"].health = Health(False, "restarting")
    with pytest.raises(InferenceError) as caught:
        one.target("m", None, {KEY: "u1"}, ready=True)
    assert caught.value.code is ErrorCode.UNAVAILABLE and "2: restarting" in caught.value.message
    split = _plane(["1", "2"], ModelRouting(weights={"1": 1, "2": 1}))
    picks = {u: split.target("m", None, {KEY: u}).version for u in ("a", "b", "c", "d")}
    for _ in range(20):  # the key decides, every time
        assert all(split.target("m", None, {KEY: u}).version == v for u, v in picks.items())


def _catalog_model(
    versions: list[str], aliases: dict[str, str], default: str, candidate: str | None = None
) -> CatalogModel:
    targets = {
        v: VersionTarget("c", v, factories.manifest(v), MicroBatcher(f"c:{v}", _never), "colocated")
        for v in versions
    }
    follow = Follow(alias="production", registry="r", candidate=candidate)
    return CatalogModel(targets, aliases, default, follow)


def test_a_catalog_model_keeps_routing_shadow_and_delivery_per_model() -> None:
    """Catalog models change in place with the operator's routing applied to each: the default
    route on the catalog's alias (not the highest version), the routing config's shadow on an
    `also` alias, a moved alias delivered under the catalog's policy unless the operator routes
    the model by weights (a sticky split), a change that takes away what the routing names
    leaves that model on its default route; the others untouched."""
    plane = _plane(["1"], ModelRouting())
    plane.catalog_policy = DeliveryPolicy(steps=[0, 50])
    shadow = ShadowConfig(version="challenger", ratio=1.0)
    routing = RoutingConfig(models={"c": ModelRouting(shadow=shadow), "later": ModelRouting()})
    both = {"production": "1", "challenger": "2"}
    plane.update_catalog({"c": _catalog_model(["1", "2"], both, "1")}, set())
    plane.apply_routing(routing)  # 'later' is not in the catalog yet: kept for when it is
    table = plane.models["c"].table
    assert table.weights == {"1": 1.0} and table.shadow_version == "2"
    assert "c" in plane.shadows and plane.follows() == {}  # the catalog follows its own alias
    plane.apply_routing(RoutingConfig())
    assert "c" not in plane.shadows
    # the alias moved to v3: delivered under the catalog's policy, v1 stable meanwhile
    plane.update_catalog({"c": _catalog_model(["1", "2", "3"], both, "1", "3")}, set())
    table = plane.models["c"].table
    assert table.delivery is not None
    assert (table.delivery.names.stable, table.delivery.names.candidate) == ("1", "3")
    assert plane.deliveries()["c"]["follow"]["candidate"] == "3"
    # a sticky 50/50 split between the catalog's two aliases: the operator's routing wins
    split = ModelRouting(weights={"production": 1, "challenger": 1})
    plane.apply_routing(RoutingConfig(models={"c": split}))
    assert plane.models["c"].table.delivery is None and plane.deliveries() == {}
    picks = {u: plane.target("c", None, {KEY: u}).version for u in map(str, range(40))}
    assert set(picks.values()) == {"1", "2"}
    assert all(plane.target("c", None, {KEY: u}).version == v for u, v in picks.items())
    plane.apply_routing(routing)
    # the challenger gone: the routing's shadow no longer fits; default route, no shadow
    plane.update_catalog({"c": _catalog_model(["1"], {"production": "1"}, "1")}, set())
    assert plane.models["c"].table.weights == {"1": 1.0} and "c" not in plane.shadows
    assert plane.models["m"].table.weights == {"1": 1.0}
    plane.update_catalog({}, {"c"})
    assert "c" not in plane.models and plane.routes()["models"].keys() == {"m"}
