"""Requests the integration tests share (no test module imports another)."""

from __future__ import annotations

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from converters.demo import churn_frame
from tests.integration.conftest import Gateway

X_BC = load_breast_cancer(return_X_y=True)[0].astype(np.float32)


def infer_body(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
        **extra,
    }


def post(gw: Gateway, path: str, **kw: object) -> requests.Response:
    return requests.post(gw.base + path, timeout=60, **kw)  # type: ignore[arg-type]


def assert_churn_answers_as_the_original(gateway: Gateway) -> None:
    """20 rows of the mixed-type churn model (strings and numbers), answered as sklearn does."""
    frame, _ = churn_frame(20, seed=5)
    inputs = [
        {
            "name": c,
            "shape": [20, 1],
            "datatype": "BYTES" if frame[c].dtype.kind not in "fi" else "FP32",
            "data": frame[c].tolist(),
        }
        for c in frame.columns
    ]
    response = post(gateway, "/v2/models/churn/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    label = next(o for o in response.json()["outputs"] if o["name"] == "label")
    original = gateway.originals["churn:1"]
    cast = frame.astype({"age": np.float32, "monthly_spend": np.float32})
    assert label["data"] == original.predict(cast).tolist()
