"""A catalog on a pool of its own (`catalog.pool`: the CatalogPool deployment) against the real
gateway: the router replica holds no session, the pool's replicas hold every model's, each model
on one of them and each within the pool's budget; models change in place with no pool or router
replica restarting; each pool replica's port binds the node's address and drops a stranger."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loadtests.many_models import base_artifact, expected, write_model
from serve.ray.catalog import POOL as ENTRY
from serve.ray.internals import KVDirectory
from serve.transport.direct import kv_prefix
from tests.conftest import free_port
from tests.integration.conftest import Gateway, deploy_beside, replica_pids, restore
from tests.integration.readings import check_drops_strangers, replica_warnings, samples, total

APP, PREFIX = "catpool", "/catpool"
METRICS_PORT = free_port()
MODELS = 24
POOL = 2
POOL_RESIDENT = 4
ROW = [0.5] * 30


@pytest.fixture(scope="module")
def pool(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("catalog")
    base = base_artifact(tmp_path_factory.mktemp("base"))
    for i in range(MODELS):
        write_model(folder, base, i)
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "args": {
            "models": [],
            "metrics": {
                "port": METRICS_PORT,
                "host": "127.0.0.1",
                "directory": str(tmp_path_factory.mktemp("pool-metrics")),
            },
            "catalog": {
                "artifacts": str(folder),
                "refresh_s": 1,
                "pinned": ["m0"],
                "pool": {"num_replicas": POOL, "max_resident": POOL_RESIDENT, "num_cpus": 0},
            },
        },
    }
    deploy_beside(gateway, app)
    try:
        yield folder
    finally:
        restore(gateway)


def _answer(gateway: Gateway, model: str) -> tuple[int, object]:
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    url = f"{gateway.base}{PREFIX}/v2/models/{model}/infer"
    response = requests.post(url, json=body, timeout=60)
    doc = response.json()
    if response.status_code != 200:
        return response.status_code, doc
    return 200, doc["outputs"][0]["data"][0]


def test_the_pool_holds_every_session_within_its_budget_and_the_router_none(
    gateway: Gateway, pool: Path
) -> None:
    assert len(replica_pids(APP, "CatalogPool")) == POOL
    for i in range(MODELS):
        assert _answer(gateway, f"m{i}") == (200, pytest.approx(expected(i))), f"m{i}"
    index = requests.post(f"{gateway.base}{PREFIX}/v2/repository/index", timeout=30).json()
    rows = [row for row in index if row.get("catalog")]
    assert len(rows) == MODELS
    assert not any(row["loaded"] for row in rows)  # the router holds no session
    assert len({row["placed_on"] for row in rows}) == POOL  # both pool replicas hold models
    found = samples(METRICS_PORT)
    batches = "modelgate_transport_batches_total"
    assert total(found, batches, transport="local") == 0
    assert total(found, batches, transport="peer") >= MODELS
    resident = [
        total(found, "modelgate_catalog_resident", model=f"m{i}", version="1")
        for i in range(MODELS)
    ]
    # Each model on its one pool replica, each replica within its budget, the pinned one never
    # evicted. Should the pool's listing have moved models meanwhile, the message says why.
    why = _placement_story(rows)
    assert all(count <= 1 for count in resident), (resident, why)
    assert POOL_RESIDENT < sum(resident) <= POOL * POOL_RESIDENT, (resident, why)
    assert resident[0] == 1, (resident, why)
    assert total(found, "modelgate_catalog_evictions_total") > 0


def _placement_story(rows: list[dict[str, object]]) -> dict[str, object]:
    """Where the index placed each model, what the pool lists, and what the replicas warned of
    peers missing or unreachable."""
    lines = [
        line
        for text in ("catalog pool:", "unreachable", "could not")
        for line in replica_warnings(text)
    ]
    return {
        "placed": {row["name"]: row["placed_on"] for row in rows},
        "listed": KVDirectory().listing(kv_prefix(APP, ENTRY)),
        "logged": lines[-20:],
    }


def test_the_pools_models_change_in_place(gateway: Gateway, pool: Path, tmp_path: Path) -> None:
    replicas = replica_pids(APP, "CatalogPool") + replica_pids(APP, "Router")
    base = base_artifact(tmp_path)
    write_model(pool, base, MODELS)  # added
    write_model(pool, base, 1, version="2")  # a newer version: on the default route
    shutil.rmtree(pool / "m2")  # removed
    deadline = time.monotonic() + 60
    while (
        _answer(gateway, f"m{MODELS}")[0] != 200
        or _answer(gateway, "m1") != (200, pytest.approx(expected(1, "2")))
        or _answer(gateway, "m2")[0] != 404
    ):
        assert time.monotonic() < deadline, "the catalog did not change in time"
        time.sleep(0.2)
    assert _answer(gateway, f"m{MODELS}") == (200, pytest.approx(expected(MODELS)))
    assert replica_pids(APP, "CatalogPool") + replica_pids(APP, "Router") == replicas


def test_the_pools_port_binds_the_node_and_drops_a_stranger(gateway: Gateway, pool: Path) -> None:
    check_drops_strangers(APP, ENTRY, POOL, METRICS_PORT)
