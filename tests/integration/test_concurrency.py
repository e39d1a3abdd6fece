"""Many requests at once: each gets its own answer; a malformed one fails alone."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
from sklearn.datasets import load_breast_cancer

from tests.integration.conftest import Gateway

X_BC = load_breast_cancer(return_X_y=True)[0].astype(np.float32)


def _body(row: np.ndarray, request_id: str) -> dict:
    return {
        "id": request_id,
        "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.tolist()}],
    }


async def _fire(gateway: Gateway, version: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    url = f"{gateway.base}/v2/models/breast_cancer/versions/{version}/infer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one(body: dict) -> tuple[int, dict]:
            async with session.post(url, json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def _check_answers(
    gateway: Gateway,
    version: str,
    rows: np.ndarray,
    results: list[tuple[int, dict]],
    skip: int | None = None,
) -> None:
    original = gateway.originals[f"breast_cancer:{version}"]
    expected = original.predict_proba(rows.astype(np.float64))
    for i, (status, doc) in enumerate(results):
        if i == skip:
            continue
        assert status == 200, doc
        assert doc["id"] == f"r{i}"
        probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")["data"]
        np.testing.assert_allclose(probs, expected[i], atol=1e-4)


def test_200_concurrent_requests_each_get_their_own_answer(gateway: Gateway) -> None:
    rows = X_BC[:200] + np.linspace(0, 1, 200, dtype=np.float32)[:, None]  # all distinct
    for version in ("1", "3"):  # dedicated and colocated
        results = asyncio.run(
            _fire(gateway, version, [_body(r, f"r{i}") for i, r in enumerate(rows)])
        )
        _check_answers(gateway, version, rows, results)


def test_one_malformed_request_amid_valid_ones_fails_alone(gateway: Gateway) -> None:
    rows = X_BC[:100]
    bodies = [_body(r, f"r{i}") for i, r in enumerate(rows)]
    bodies[37]["inputs"][0]["shape"] = [1, 29]
    results = asyncio.run(_fire(gateway, "1", bodies))
    assert results[37][0] == 400 and "shape [1, 29] needs 29 values" in results[37][1]["error"]
    _check_answers(gateway, "1", rows, results, skip=37)
