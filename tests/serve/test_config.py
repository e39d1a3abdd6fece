from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.core.config import GatewayConfig


def _config(**model: object) -> dict[str, object]:
    return {"models": [{"name": "m", "versions": [{"artifact": "/x"}], **model}]}


def test_a_minimal_config_gets_sane_defaults() -> None:
    config = GatewayConfig.model_validate(_config())
    version = config.models[0].versions[0]
    assert version.placement == "dedicated" and version.batching.max_in_flight == 2
    assert config.limits.max_body_bytes == 64 << 20


@pytest.mark.parametrize(
    ("doc", "field", "problem"),
    [
        ({"models": []}, "models", "at least 1 item"),
        (
            _config(versions=[{"uri": "models:/m/1", "artifact": "/x"}]),
            "models.0.versions.0",
            "exactly one of 'uri'",
        ),
        (
            _config(versions=[{"artifact": "/x", "placement": "gpu"}]),
            "models.0.versions.0.placement",
            "'dedicated' or 'colocated'",
        ),
        (
            _config(versions=[{"artifact": "/x", "batching": {"max_batch_rows": 0}}]),
            "models.0.versions.0.batching.max_batch_rows",
            "greater than or equal to 1",
        ),
        (
            _config(
                versions=[{"artifact": "/x", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]
            ),
            "models.0.versions.0.autoscaling",
            "min_replicas 3 > max_replicas 2",
        ),
        (_config(typo=1), "models.0.typo", "Extra inputs are not permitted"),
        (
            {"models": [{"name": "m", "versions": [{"artifact": "/x"}]}] * 2},
            "",
            "model names must be unique; repeated: m",
        ),
    ],
)
def test_bad_configs_name_the_field_and_the_problem(doc: dict, field: str, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        GatewayConfig.model_validate(doc)
    text = str(info.value)
    assert field in text and problem in text
