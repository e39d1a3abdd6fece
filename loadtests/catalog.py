"""Many models, measured against a running gateway whose catalog holds the quickstart's four
models with a budget of two sessions per router replica (`configs/catalog.yaml`):

    .venv/bin/modelgate serve configs/catalog.yaml          # in one terminal
    .venv/bin/python -m loadtests.catalog                    # in another

- cold vs warm latency: one model asked again and again (warm), against three models asked in
  turn (each request finds its model evicted by the two before it: cold);
- req/s with a working set larger than the budget (four models) as a ratio to one that fits
  (two), 8 clients;
- time from Triton's load of a model the catalog had dropped to its first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import urllib.request
from itertools import cycle

import aiohttp

from loadtests.clients import Target
from loadtests.runner import load_payloads

MODELS = ("iris", "diabetes", "breast_cancer", "churn")


def _bodies(url: str) -> dict[str, bytes]:
    out = {}
    for model in MODELS:
        out[model] = load_payloads(Target(url=url, model=model))[0].json
    return out


async def _latencies(url: str, bodies: dict[str, bytes], models: list[str], n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for model in [m for m, _ in zip(cycle(models), range(n), strict=False)]:
            started = time.perf_counter()
            async with session.post(f"{url}/v2/models/{model}/infer", data=bodies[model]) as r:
                await r.read()
                assert r.status == 200, (model, r.status)
            out.append((time.perf_counter() - started) * 1000)
    return out


async def _rate(url: str, bodies: dict[str, bytes], models: list[str], seconds: float) -> float:
    done = 0
    ends = time.monotonic() + seconds

    async def client(offset: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        for model in cycle(models[offset % len(models) :] + models[: offset % len(models)]):
            if time.monotonic() > ends:
                return
            async with session.post(f"{url}/v2/models/{model}/infer", data=bodies[model]) as r:
                await r.read()
                done += r.status == 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(i, session) for i in range(8)))
    return done / seconds


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=150):
        pass


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    url = args.url
    bodies = _bodies(url)
    warm = asyncio.run(_latencies(url, bodies, ["iris"], 300))
    cold = asyncio.run(_latencies(url, bodies, ["diabetes", "breast_cancer", "churn"], 300))
    print(f"warm: p50 {_pct(warm, 50):.2f} ms, p99 {_pct(warm, 99):.2f} ms")
    print(f"cold: p50 {_pct(cold, 50):.2f} ms, p99 {_pct(cold, 99):.2f} ms")
    fits = asyncio.run(_rate(url, bodies, ["iris", "diabetes"], 10))
    beyond = asyncio.run(_rate(url, bodies, list(MODELS), 10))
    print(
        f"8 clients: working set of 2 (fits) {fits:.0f} req/s, of 4 {beyond:.0f} req/s "
        f"({beyond / fits:.2f}x)"
    )
    _post(f"{url}/v2/repository/models/churn/unload")
    started = time.perf_counter()
    _post(f"{url}/v2/repository/models/churn/load")
    asyncio.run(_latencies(url, bodies, ["churn"], 1))
    print(
        f"Triton load of a dropped model to its first answer: {time.perf_counter() - started:.2f} s"
    )


if __name__ == "__main__":
    main()
