"""Many models (serve/control/catalog.py, serve/core/resident.py) against the real gateway: an
application beside the session's whose models all come from a catalog, a folder of artifacts
(tests/many_models.py: `m<i>` answers 0.5 + i), a thousand of them, with a budget of a few dozen
resident sessions per router replica.

- every model answers its own right answer, though at most `max_resident` are loaded at once
  on each of the two router replicas, each model on the one it is placed on;
- models are added, re-pointed and removed in place under load: no failed request, and the
  router replica serving the others is the same process before and after;
- Triton's repository load and unload change the catalog; the index says what is loaded;
- a burst of requests to cold models beyond what loads can keep up with is shed at once with
  503 and Retry-After, and every request is answered;
- a cold model refuses bad input before loading, and answers 504 at a deadline shorter than
  its load, which goes on and is kept.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from loadtests.many_models import base_artifact, copy_as, expected, write_model
from tests.conftest import free_port
from tests.integration.conftest import (
    Gateway,
    deploy_beside,
    replica_pids,
    restore,
)
from tests.integration.readings import Sample, check_drops_strangers, samples, total
from tests.integration.slow_model import slow_artifact
from tests.integration.traffic import Traffic

APP, PREFIX = "catalog", "/catalog"
METRICS_PORT = free_port()
MODELS = 1000
ROUTERS = 2
MAX_RESIDENT = 24
MAX_PENDING = 3
SLOW = 8
ROW = [0.5] * 30


@pytest.fixture(scope="module")
def catalog(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The catalog's application, with metrics of its own (a folder and an exporter port): a
    thousand models' series would otherwise stay in the session gateway's exposition, and
    every later scrape of it would read them."""
    folder = tmp_path_factory.mktemp("catalog")
    base = base_artifact(tmp_path_factory.mktemp("base"))
    for i in range(MODELS):
        write_model(folder, base, i)
    # Models whose load takes seconds (a graph of thousands of layers, warmed up): a burst to
    # them outruns what loads can do, whatever the machine.
    slow = slow_artifact(tmp_path_factory.mktemp("slow"), layers=4800)
    for i in range(SLOW + 1):  # one more, for the guarantees of a cold model
        copy_as(slow, folder, f"s{i}")
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "args": {
            "models": [],
            "metrics": {
                "port": METRICS_PORT,
                "host": "127.0.0.1",
                "directory": str(tmp_path_factory.mktemp("catalog-metrics")),
            },
            "router": {"num_replicas": ROUTERS},
            "catalog": {
                "artifacts": str(folder),
                "max_resident": MAX_RESIDENT,
                "max_loading": 1,
                "max_pending_loads": MAX_PENDING,
                "refresh_s": 1,
            },
        },
    }
    deploy_beside(gateway, app)
    try:
        yield folder
    finally:
        restore(gateway)


def _url(gateway: Gateway, model: str) -> str:
    return f"{gateway.base}{PREFIX}/v2/models/{model}/infer"


def _body() -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}


def _answer(gateway: Gateway, model: str) -> tuple[int, object]:
    response = requests.post(_url(gateway, model), json=_body(), timeout=60)
    doc = response.json()
    if response.status_code != 200:
        return response.status_code, doc
    return 200, doc["outputs"][0]["data"][0]


def _until(check: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the catalog did not change in time"
        time.sleep(0.2)


def _scrape(gateway: Gateway) -> list[Sample]:
    """Every sample of the catalog's own exporter, from one scrape (a thousand models' series)."""
    return samples(METRICS_PORT)


def test_every_model_answers_right_placed_on_one_router_within_its_budget(
    gateway: Gateway, catalog: Path
) -> None:
    with requests.Session() as session:
        for i in range(MODELS):
            response = session.post(_url(gateway, f"m{i}"), json=_body(), timeout=60)
            assert response.status_code == 200, response.text
            value = response.json()["outputs"][0]["data"][0]
            assert value == pytest.approx(expected(i), abs=1e-3), f"m{i}"
    samples = _scrape(gateway)
    assert total(samples, "modelgate_catalog_loads_total", outcome="ok") >= MODELS
    assert total(samples, "modelgate_catalog_evictions_total") >= MODELS - ROUTERS * MAX_RESIDENT
    # Each model's requests are counted as its own; its batches as the catalog's.
    assert total(samples, "modelgate_requests_total", model="m7", code="ok") >= 1
    batches = total(samples, "modelgate_batch_duration_seconds_count", model="(catalog)")
    assert batches >= MODELS
    # The last few models, each asked again through both routers (HAProxy spreads the
    # connections): each is resident on one router only, the one it is placed on; together
    # the routers hold more than one budget.
    last = [f"m{i}" for i in range(MODELS - MAX_RESIDENT, MODELS)]
    for _ in range(3):
        for model in last:
            assert _answer(gateway, model)[0] == 200
    samples = _scrape(gateway)
    held = {m: total(samples, "modelgate_catalog_resident", model=m, version="1") for m in last}
    assert set(held.values()) == {1.0}, held
    resident = total(samples, "modelgate_catalog_resident_models")
    assert MAX_RESIDENT < resident <= ROUTERS * MAX_RESIDENT
    peer = sum(
        total(samples, "modelgate_transport_batches_total", model=m, transport="peer") for m in last
    )
    assert peer > 0  # some batches were sent to the router the model is placed on
    index = requests.post(f"{gateway.base}{PREFIX}/v2/repository/index", timeout=10).json()
    rows = {row["name"]: row for row in index}
    assert len(rows) == MODELS + SLOW + 1 and all(r["state"] == "READY" for r in rows.values())
    assert sum(r["loaded"] for r in rows.values()) <= MAX_RESIDENT  # this router's
    placed = {r["placed_on"] for r in rows.values()}
    assert len(placed) == ROUTERS and "" not in placed  # every model placed, on both routers
    assert all(
        r["loaded"] for r in rows.values() if r["name"] in last and r["placed_on"] == r["router"]
    )


def test_models_change_in_place_under_load_without_a_restart_or_a_failed_request(
    gateway: Gateway, catalog: Path, tmp_path: Path
) -> None:
    routers = replica_pids(APP, "Router")
    base = base_artifact(tmp_path)
    with Traffic(gateway, PREFIX, "m0", rate=40) as traffic:
        time.sleep(2)
        write_model(catalog, base, MODELS)  # a new model
        _until(lambda: _answer(gateway, f"m{MODELS}")[0] == 200)
        write_model(catalog, base, 1, version="2")  # re-pointed
        _until(lambda: _answer(gateway, "m1") == (200, pytest.approx(expected(1, "2"))))
        shutil.rmtree(catalog / "m2")  # removed
        _until(lambda: _answer(gateway, "m2")[0] == 404)
        time.sleep(2)
    assert traffic.outcomes["ok"] > 100 and set(traffic.outcomes) == {"ok"}, traffic.failures()
    assert replica_pids(APP, "Router") == routers
    status, value = _answer(gateway, f"m{MODELS}")
    assert (status, value) == (200, pytest.approx(expected(MODELS)))


def test_triton_load_and_unload_change_the_catalog(gateway: Gateway, catalog: Path) -> None:
    repo = f"{gateway.base}{PREFIX}/v2/repository/models"
    assert requests.post(f"{repo}/m3/unload", timeout=150).status_code == 200
    status, doc = _answer(gateway, "m3")
    assert status == 404 and "unknown model 'm3'" in doc["error"]  # type: ignore[index]
    answer = requests.post(f"{repo}/m3/load", timeout=150)
    assert answer.status_code == 200, answer.text
    index = requests.post(f"{gateway.base}{PREFIX}/v2/repository/index", timeout=10).json()
    assert next(r for r in index if r["name"] == "m3")["state"] == "READY"
    assert _answer(gateway, "m3") == (200, pytest.approx(expected(3)))
    refused = requests.post(f"{repo}/nope/load", timeout=150)
    assert refused.status_code == 400 and "nope" in refused.json()["error"]
    bad = requests.post(f"{repo}/m3/load", json={"parameters": {"config": "{}"}}, timeout=10)
    assert bad.status_code == 400 and "not supported" in bad.json()["error"]


def test_a_burst_to_cold_models_is_shed_at_once_and_nothing_hangs(
    gateway: Gateway, catalog: Path
) -> None:
    # Never asked for: cold. However they are placed, one router holds at least SLOW / ROUTERS
    # of them, more than one loading and MAX_PENDING waiting: those beyond are shed at once,
    # since their requests all arrive within the first load (seconds).
    assert SLOW // ROUTERS > MAX_PENDING
    cold = [f"s{i}" for i in range(SLOW)]

    async def one(session: aiohttp.ClientSession, model: str) -> tuple[int, dict[str, str]]:
        async with session.post(_url(gateway, model), json=_body()) as response:
            await response.read()
            return response.status, dict(response.headers)

    async def main() -> list[tuple[int, dict[str, str]]]:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await asyncio.gather(*(one(session, m) for m in cold))

    answers = asyncio.run(main())
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    assert all(int(h["Retry-After"]) >= 1 for s, h in answers if s == 503)
    for model in cold:  # and each is served once asked again at a pace loads keep up with
        assert _answer(gateway, model)[0] == 200


def test_the_routers_peer_port_binds_the_node_and_drops_a_stranger(
    gateway: Gateway, catalog: Path
) -> None:
    from serve.ray.catalog import PEERS

    check_drops_strangers(APP, PEERS, ROUTERS, METRICS_PORT)


def test_a_cold_model_keeps_the_gateways_guarantees(gateway: Gateway, catalog: Path) -> None:
    cold = f"s{SLOW}"  # never asked for: its load takes seconds
    # Bad input is refused as for any model, before anything loads.
    bad = {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": ROW[:29]}]}
    refused = requests.post(_url(gateway, cold), json=bad, timeout=30)
    assert refused.status_code == 400 and "'input'" in refused.json()["error"]
    assert total(_scrape(gateway), "modelgate_catalog_loads_total", model=cold) == 0
    # A deadline shorter than the load: 504 at the deadline; the load goes on, and is kept.
    hurried = _body() | {"parameters": {"timeout": 100_000}}  # microseconds: 100 ms
    late = requests.post(_url(gateway, cold), json=hurried, timeout=30)
    assert late.status_code == 504, late.text
    _until(lambda: _answer(gateway, cold)[0] == 200)
    assert total(_scrape(gateway), "modelgate_catalog_loads_total", model=cold, outcome="ok") == 1
