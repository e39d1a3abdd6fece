"""Lazily loaded sessions within a budget (serve/core/resident.py), and the catalog's control
period (serve/control/catalog.py) on a folder of real artifacts and a KV of its own."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from loadtests.many_models import base_artifact, write_model
from serve.control.catalog import CatalogStore, CatalogSync
from serve.core.config import GatewayConfig
from serve.core.errors import ErrorCode, InferenceError
from serve.core.resident import ResidentSet, Session
from tests.serve.test_delivery import MemoryKV


class Loader:
    """Counts loads; each takes `delay` seconds of a thread, or fails for keys in `broken`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.loads: list[str] = []
        self.broken: set[str] = set()
        self.gate: threading.Event | None = None

    def __call__(self, key: str) -> Session:
        self.loads.append(key)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        if key in self.broken:
            raise RuntimeError(f"{key} is broken")
        return lambda feeds: {"key": np.array([key])}


def _set(loader: Callable[[str], Session], **kwargs: int) -> ResidentSet:
    return ResidentSet(loader, **{"max_resident": 2, **kwargs})  # type: ignore[arg-type]


def test_one_load_however_many_wait_and_the_least_recently_used_goes_beyond_the_budget() -> None:
    async def main() -> None:
        loader = Loader(delay=0.05)
        rs = _set(loader, max_resident=2)
        sessions = await asyncio.gather(*(rs.acquire("a") for _ in range(5)))
        assert loader.loads == ["a"] and len({id(s) for s in sessions}) == 1
        await rs.acquire("b")
        rs.get("a")  # a is now the most recently used
        await rs.acquire("c")
        assert rs.resident == ["a", "c"] and rs.stats.evictions == 1  # b went
        await rs.acquire("b")
        assert loader.loads == ["a", "b", "c", "b"]

    asyncio.run(main())


def test_a_pinned_session_is_never_evicted() -> None:
    async def main() -> None:
        rs = ResidentSet(Loader(), max_resident=2, pinned=["a"])
        for key in ("a", "b", "c", "d"):
            await rs.acquire(key)
        assert rs.resident == ["a", "d"]

    asyncio.run(main())


def test_loads_that_cannot_keep_up_are_shed_at_once_with_a_retry_hint() -> None:
    async def main() -> None:
        loader = Loader()
        loader.gate = threading.Event()
        rs = _set(loader, max_loading=1, max_pending=2)
        waiting = [asyncio.ensure_future(rs.acquire(k)) for k in ("a", "b")]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(InferenceError) as shed:
            await rs.acquire("c")
        assert time.monotonic() - started < 1  # refused, not queued
        assert shed.value.code is ErrorCode.OVERLOADED and shed.value.retry_after_s >= 1
        assert "2 loads are waiting" in str(shed.value)
        loader.gate.set()
        await asyncio.gather(*waiting)
        await rs.acquire("c")  # room again
        assert rs.stats.shed == 1

    asyncio.run(main())


def test_a_load_past_the_deadline_answers_late_and_the_next_request_finds_it_resident() -> None:
    async def main() -> None:
        loader = Loader(delay=0.3)
        rs = _set(loader)
        with pytest.raises(InferenceError) as late:
            await rs.acquire("a", time.monotonic() + 0.05)
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.4)
        assert rs.get("a") is not None and loader.loads == ["a"]

    asyncio.run(main())


def test_a_failed_load_is_answered_at_once_for_a_while_then_tried_again() -> None:
    async def main() -> None:
        loader = Loader()
        loader.broken.add("a")
        rs = ResidentSet(loader, max_resident=2, retry_failed_s=0.2)
        with pytest.raises(InferenceError) as failed:
            await rs.acquire("a")
        assert failed.value.code is ErrorCode.UNAVAILABLE and "a is broken" in str(failed.value)
        with pytest.raises(InferenceError) as again:  # within retry_failed_s: no second load
            await rs.acquire("a")
        assert "a is broken" in str(again.value) and again.value.retry_after_s == 1.0
        assert loader.loads == ["a"]
        loader.broken.clear()
        await asyncio.sleep(0.25)
        await rs.acquire("a")
        assert loader.loads == ["a", "a"] and rs.stats.failed == 1

    asyncio.run(main())


def test_a_model_discarded_while_it_loads_is_not_kept() -> None:
    async def main() -> None:
        rs = _set(Loader(delay=0.1))
        pending = asyncio.ensure_future(rs.acquire("a"))
        await asyncio.sleep(0.02)
        rs.discard("a")
        await pending  # the request that waited is answered
        assert rs.resident == []

    asyncio.run(main())


# -- the catalog's control period -------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_artifact(tmp_path_factory.mktemp("base"))


def _sync(folder: Path, kv: MemoryKV, tmp_path: Path) -> CatalogSync:
    config = GatewayConfig.model_validate(
        {"catalog": {"artifacts": str(folder)}, "artifacts": str(tmp_path / "store")}
    )
    return CatalogSync(config, CatalogStore("app", kv))


def test_the_catalog_follows_its_folder_and_the_repository_requests(
    base: Path, tmp_path: Path
) -> None:
    folder, kv = tmp_path / "catalog", MemoryKV()
    for i in range(3):
        write_model(folder, base, i)
    sync, store = _sync(folder, kv, tmp_path), CatalogStore("app", kv)
    assert sync.tick() and store.revision() == 1
    assert sorted(store.entries()) == ["m0", "m1", "m2"]
    assert not sync.tick() and store.revision() == 1  # nothing changed: nothing written
    write_model(folder, base, 1, version="2")  # re-pointed to a newer version
    shutil.rmtree(folder / "m2")  # removed
    write_model(folder, base, 3)  # added
    assert sync.tick() and store.revision() == 2
    entries = store.entries()
    assert sorted(entries) == ["m0", "m1", "m3"]
    assert sorted(entries["m1"]["versions"]) == ["1", "2"] and entries["m1"]["default"] == "2"
    store.request("m0", "unload")
    sync.tick()
    assert sorted(store.entries()) == ["m1", "m3"]
    assert _sync(folder, kv, tmp_path).tick() is False  # a restarted controller keeps it
    store.request("m0", "load")
    sync.tick()
    assert sorted(store.entries()) == ["m0", "m1", "m3"]
    store.request("nope", "load")  # no registry: refused, with the reason
    sync.tick()
    assert "nope" in store.refused() and "nope" not in store.entries()


def test_a_broken_artifact_in_the_folder_is_refused_and_the_rest_serve(
    base: Path, tmp_path: Path
) -> None:
    folder, kv = tmp_path / "catalog", MemoryKV()
    write_model(folder, base, 0)
    broken = write_model(folder, base, 1)
    (broken / "model.onnx").write_bytes(b"not the model the manifest names")
    sync, store = _sync(folder, kv, tmp_path), CatalogStore("app", kv)
    sync.tick()
    assert list(store.entries()) == ["m0"]
    assert any("not a complete artifact" in reason for reason in store.refused().values())


def test_the_catalog_follows_a_registry_alias(tmp_path: Path) -> None:
    """Every model carrying `@production` is in the catalog at the version the alias names,
    converted and verified in the control plane; moving the alias re-points it."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from converters.registry import open_registry

    x, y = load_iris(return_X_y=True)
    registry = open_registry(str(tmp_path / "registry"))
    for name, versions in (("a", 2), ("b", 1), ("c", 1)):
        for v in range(versions):
            model = LogisticRegression(C=1.0 + v, max_iter=500).fit(x, y)
            registry.publish_sklearn(name, model, x[:5].astype("float32"))
    registry.set_alias("a", "production", "1")
    registry.set_alias("b", "production", "1")  # c carries no alias: not in the catalog
    config = GatewayConfig.model_validate(
        {
            "registry": str(tmp_path / "registry"),
            "artifacts": str(tmp_path / "store"),
            "catalog": {"alias": "production"},
        }
    )
    kv = MemoryKV()
    sync, store = CatalogSync(config, CatalogStore("app", kv)), CatalogStore("app", kv)
    assert sync.tick()
    entries = store.entries()
    assert sorted(entries) == ["a", "b"]
    assert list(entries["a"]["versions"]) == ["1"] and entries["a"]["default"] == "1"
    assert entries["a"]["aliases"] == {"production": "1"}
    ref = entries["a"]["versions"]["1"]["ref"]
    assert Path(ref["path"], "model.onnx").is_file()  # converted, verified
    registry.set_alias("a", "production", "2")
    assert sync.tick()
    assert list(store.entries()["a"]["versions"]) == ["2"]
    assert store.refused() == {}


def test_a_catalog_alias_with_a_delivery_serves_what_the_follower_says(tmp_path: Path) -> None:
    """`also` aliases serve their versions beside the catalog's alias; with a delivery policy,
    the version the alias moved to is a candidate beside the one served as the alias until
    the delivery ends: promoted, it serves alone; refused (failed), the alias stays."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from converters.registry import open_registry
    from serve.control.follow import FollowStore

    x, y = load_iris(return_X_y=True)
    location = str(tmp_path / "registry")
    registry = open_registry(location)
    for v in range(4):
        model = LogisticRegression(C=1.0 + v, max_iter=500).fit(x, y)
        registry.publish_sklearn("a", model, x[:5].astype("float32"))
    registry.set_alias("a", "production", "1")
    registry.set_alias("a", "challenger", "2")
    config = GatewayConfig.model_validate(
        {
            "registry": location,
            "artifacts": str(tmp_path / "store"),
            "metrics": {"port": 9999},
            "catalog": {"alias": "production", "also": ["challenger"], "delivery": {}},
        }
    )
    kv = MemoryKV()
    sync, store, follow = (
        CatalogSync(config, CatalogStore("app", kv)),
        CatalogStore("app", kv),
        FollowStore(kv),
    )

    def entry() -> dict[str, object]:
        sync.tick()
        e = store.entries()["a"]
        return {k: e[k] for k in ("default", "aliases", "follow")} | {
            "versions": sorted(e["versions"])
        }

    held = {"alias": "production", "registry": location, "candidate": None}
    assert entry() == {
        "default": "1",
        "aliases": {"production": "1", "challenger": "2"},
        "follow": held,
        "versions": ["1", "2"],
    }
    registry.set_alias("a", "production", "3")  # moved: v3 is delivered, v1 serves meanwhile
    assert entry() == {
        "default": "1",
        "aliases": {"production": "1", "challenger": "2"},
        "follow": held | {"candidate": "3"},
        "versions": ["1", "2", "3"],
    }
    state = follow.get(location, "a", "production")
    assert state is not None and state.serving == "1"
    state.serving = "3"  # the delivery controller promoted it (serve/control/follow.py)
    follow.put(location, "a", "production", state)
    assert entry() == {
        "default": "3",
        "aliases": {"production": "3", "challenger": "2"},
        "follow": held,
        "versions": ["2", "3"],
    }
    registry.set_alias("a", "production", "4")
    state.refused["4"] = "its delivery failed"  # as the controller leaves a failed one
    follow.put(location, "a", "production", state)
    assert entry()["versions"] == ["2", "3"] and entry()["default"] == "3"


def test_catalog_config_refuses_what_cannot_work() -> None:
    def refused(catalog: dict[str, object], **more: object) -> str:
        with pytest.raises(ValueError) as caught:
            GatewayConfig.model_validate({"catalog": catalog, **more})
        return str(caught.value)

    assert "set 'registry'" in refused({"alias": "production"})
    assert "set 'alias'" in refused({"artifacts": "x", "also": ["challenger"]})
    assert "already" in refused({"alias": "p", "also": ["p"]}, registry="r")
    off = {"port": None}
    assert "metrics.port" in refused({"alias": "p", "delivery": {}}, registry="r", metrics=off)
    assert "leave 'stable'" in refused(
        {"alias": "p", "delivery": {"candidate": "c"}}, registry="r", metrics={"port": 1}
    )
