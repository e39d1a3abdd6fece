"""The direct transport (serve/direct.py): a fixed-size dedicated version's batches go over it
and answer exactly as the original model; autoscaled versions and string tensors go through
Ray Serve's handle; a replica's endpoint is published in Ray's KV while it runs."""

from __future__ import annotations

import numpy as np
import requests
from sklearn.datasets import load_breast_cancer

from serve.direct import NAMESPACE, kv_prefix
from tests.integration.conftest import APP, Gateway, metric_value
from tests.integration.test_http import X_BC, _infer_body, test_mixed_type_model_with_strings


def _batches(gateway: Gateway, version: str, transport: str, model: str = "breast_cancer") -> float:
    return metric_value(
        gateway,
        "modelgate_transport_batches_total",
        model=model,
        version=version,
        transport=transport,
    )


def test_fixed_size_versions_go_direct_and_answer_as_the_original(gateway: Gateway) -> None:
    from ray.experimental.internal_kv import _internal_kv_list

    keys = _internal_kv_list(kv_prefix(APP, "breast_cancer-v1"), namespace=NAMESPACE)
    assert len(keys) == 1  # one replica, one endpoint
    before = {t: _batches(gateway, "1", t) for t in ("direct", "handle")}
    original = gateway.originals["breast_cancer:1"]
    x = load_breast_cancer(return_X_y=True)[0][:40].astype(np.float32)
    for i in range(0, 40, 4):
        response = requests.post(
            f"{gateway.base}/v2/models/breast_cancer/versions/1/infer",
            json=_infer_body(x[i : i + 4]),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        label = next(o for o in response.json()["outputs"] if o["name"] == "label")
        assert label["data"] == original.predict(x[i : i + 4]).tolist()
    assert _batches(gateway, "1", "direct") - before["direct"] == 10
    assert _batches(gateway, "1", "handle") == before["handle"]


def test_autoscaled_versions_and_strings_go_through_the_handle(gateway: Gateway) -> None:
    autoscaled = _batches(gateway, "2", "handle")
    response = requests.post(
        f"{gateway.base}/v2/models/breast_cancer/versions/2/infer",
        json=_infer_body(X_BC[:2]),
        timeout=30,
    )
    assert response.status_code == 200
    assert _batches(gateway, "2", "handle") == autoscaled + 1
    assert _batches(gateway, "2", "direct") == 0
    strings = _batches(gateway, "1", "handle", model="churn")
    test_mixed_type_model_with_strings(gateway)
    assert _batches(gateway, "1", "handle", model="churn") == strings + 1
