"""Many models (issue 22), measured: a gateway whose catalog is a folder of small models
(loadtests/many_models.py), one router replica with a budget of `BUDGET` sessions, in a Ray of
its own (stop other gateways first):

    .venv/bin/python -m loadtests.catalog          # `make bench` runs it too

- cold vs warm latency of a small model: one model asked again and again (warm), against
  models asked in turn, more of them than the budget (each request finds its model evicted);
- resident memory per model: the router's RSS with the budget full, over one model loaded;
- from a catalog change (a new model's folder written) to that model's first answer;
- req/s and CPU a request with a working set four times the budget, as a ratio to one that
  fits (8 closed-loop clients); and the same working set on a `catalog.pool` of four replicas
  with two budgets each (room for the hashing's imbalance; the router then holds no session).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from itertools import cycle
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.many_models import base_artifact, expected, write_model

MODELS = 200
BUDGET = 16
POOL = 4  # pool replicas: four budgets, the working set that thrashes one router
#: Sessions a pool replica keeps: two budgets, room for hashing's imbalance (64 models over
#: four replicas put 5 to 27 on one, in 200 simulated draws of the replicas' addresses: at
#: exactly 16 each, some replicas thrash).
POOL_RESIDENT = 32
APP = "catalog"
ROW = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.5] * 30}]}
BODY = json.dumps(ROW).encode()


def _config(folder: Path, port: int, pool: int = 0) -> dict[str, Any]:
    """The catalog on the router replica (`pool` 0), or on a pool of `pool` replicas keeping
    POOL_RESIDENT sessions each."""
    catalog: dict[str, Any] = {
        "artifacts": str(folder / "models"),
        "max_resident": BUDGET,
        "refresh_s": 1,
    }
    if pool:
        catalog["pool"] = {"num_replicas": pool, "max_resident": POOL_RESIDENT, "num_cpus": 0}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve.app:build_app",
                "args": {
                    "models": [],
                    "artifacts": str(folder / "store"),
                    "catalog": catalog,
                },
            }
        ],
    }


async def _sequential(url: str, models: list[str], n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for model in [m for m, _ in zip(cycle(models), range(n), strict=False)]:
            started = time.perf_counter()
            async with session.post(f"{url}/v2/models/{model}/infer", data=BODY) as r:
                await r.read()
                assert r.status == 200, (model, r.status)
            out.append((time.perf_counter() - started) * 1000)
    return out


async def _closed_loop(url: str, models: list[str], seconds: float) -> int:
    done = 0
    ends = time.monotonic() + seconds

    async def client(offset: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        for model in cycle(models[offset:] + models[:offset]):
            if time.monotonic() > ends:
                return
            async with session.post(f"{url}/v2/models/{model}/infer", data=BODY) as r:
                await r.read()
                done += r.status == 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(i * len(models) // 8, session) for i in range(8)))
    return done


def _rate(url: str, models: list[str], seconds: float) -> dict[str, float]:
    from loadtests.bench import machine_busy_s

    asyncio.run(_closed_loop(url, models, 1.0))  # warm-up
    busy = machine_busy_s()
    done = asyncio.run(_closed_loop(url, models, seconds))
    cpu = machine_busy_s() - busy
    return {"rps": done / seconds, "cpu_us": cpu / max(done, 1) * 1e6}


def _router_rss() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(f"ray::ServeReplica:{APP}:Router".encode()):
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
    raise RuntimeError("no router replica found")


def _first_answer(url: str, folder: Path, base: Path, index: int) -> float:
    """Seconds from writing a new model's folder to its first right answer."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    write_model(folder / "models", base, index)
    while True:
        request = urllib.request.Request(f"{url}/v2/models/m{index}/infer", data=BODY)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                value = json.loads(response.read())["outputs"][0]["data"][0]
                assert abs(value - expected(index)) < 1e-3
                return time.monotonic() - started
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, exc.code
        time.sleep(0.05)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def run(duration_s: float = 5.0) -> dict[str, Any]:
    from loadtests.bench import BENCH_CONFIG
    from serve.ray import launcher

    folder = Path(tempfile.mkdtemp(prefix="mg-catalog-bench-"))
    base = base_artifact(folder / "scratch")
    for i in range(MODELS):
        write_model(folder / "models", base, i)
    port = launcher.load_config(BENCH_CONFIG)["http_options"]["port"]
    url = f"http://127.0.0.1:{port}"
    launcher.start_ray()
    try:
        launcher.deploy(_config(folder, port))
        asyncio.run(_sequential(url, ["m0"], 20))
        rss_one = _router_rss()
        warm = asyncio.run(_sequential(url, ["m0"], 300))
        cold = asyncio.run(_sequential(url, [f"m{i}" for i in range(1, 2 * BUDGET + 2)], 300))
        rss_full = _router_rss()  # the budget full (BUDGET sessions)
        changes = [_first_answer(url, folder, base, 10_000 + i) for i in range(3)]
        fits = _rate(url, [f"m{i}" for i in range(BUDGET // 2)], duration_s)
        beyond = _rate(url, [f"m{i}" for i in range(4 * BUDGET)], duration_s)
        launcher.deploy(_config(folder, port, pool=POOL))  # the same models on a pool
        asyncio.run(_sequential(url, [f"m{i}" for i in range(4 * BUDGET)], 4 * BUDGET))
        pooled = _rate(url, [f"m{i}" for i in range(4 * BUDGET)], duration_s)
        return {
            "models": MODELS,
            "budget": BUDGET,
            "warm_p50_ms": _pct(warm, 50),
            "warm_p99_ms": _pct(warm, 99),
            "cold_p50_ms": _pct(cold, 50),
            "cold_p99_ms": _pct(cold, 99),
            "rss_per_model_mb": (rss_full - rss_one) / (BUDGET - 1) / 2**20,
            "router_rss_mb": rss_full / 2**20,
            "change_to_answer_s": changes,
            "fits": fits,
            "beyond": beyond,
            "pool": POOL,
            "pool_resident": POOL_RESIDENT,
            "pooled": pooled,
        }
    finally:
        launcher.stop_ray()


def lines(r: dict[str, Any]) -> list[str]:
    """The figures as RESULTS.md shows them."""
    changes = r["change_to_answer_s"]
    return [
        f"{r['models']} small models in a folder catalog, one router replica, "
        f"`max_resident: {r['budget']}`, `refresh_s: 1` (`python -m loadtests.catalog`):",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| warm p50 / p99 (one model again and again) | {r['warm_p50_ms']:.2f} / "
        f"{r['warm_p99_ms']:.2f} ms |",
        f"| cold p50 / p99 (each request's model evicted) | {r['cold_p50_ms']:.2f} / "
        f"{r['cold_p99_ms']:.2f} ms ({r['cold_p50_ms'] / r['warm_p50_ms']:.1f}× / "
        f"{r['cold_p99_ms'] / r['warm_p99_ms']:.1f}× warm) |",
        f"| resident memory per small model | {r['rss_per_model_mb']:.2f} MB (router "
        f"{r['router_rss_mb']:.0f} MB RSS with {r['budget']} loaded) |",
        f"| catalog change → the new model's first answer | "
        f"{', '.join(f'{s:.2f}' for s in changes)} s (target ≤ 5 s) |",
        f"| 8 clients, working set of {r['budget'] // 2} (fits) | {r['fits']['rps']:.0f} req/s, "
        f"{r['fits']['cpu_us']:.0f} µs CPU a request |",
        f"| 8 clients, working set of {4 * r['budget']} (4× the budget) | "
        f"{r['beyond']['rps']:.0f} req/s ({r['beyond']['rps'] / r['fits']['rps']:.2f}×), "
        f"{r['beyond']['cpu_us']:.0f} µs CPU a request "
        f"({r['beyond']['cpu_us'] / r['fits']['cpu_us']:.2f}×) |",
        f"| the same on a `catalog.pool` of {r['pool']} replicas × {r['pool_resident']} (it "
        f"fits the pool) | {r['pooled']['rps']:.0f} req/s "
        f"({r['pooled']['rps'] / r['fits']['rps']:.2f}×), "
        f"{r['pooled']['cpu_us']:.0f} µs CPU a request "
        f"({r['pooled']['cpu_us'] / r['fits']['cpu_us']:.2f}×) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.catalog")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.duration)
    if args.out is not None:
        args.out.write_text(json.dumps(result))
    print("\n".join(lines(result)))


if __name__ == "__main__":
    main()
