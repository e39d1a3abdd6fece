from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.core.config import GatewayConfig


def _config(**model: object) -> dict[str, object]:
    return {"models": [{"name": "m", "versions": [{"artifact": "/x"}], **model}]}


def test_a_model_name_may_hold_dots_but_not_be_one_or_two() -> None:
    doc = {"models": [{"name": "fraud.v2..x", "versions": [{"artifact": "/x"}]}]}
    assert GatewayConfig.model_validate(doc).models[0].name == "fraud.v2..x"


def test_a_minimal_config_gets_sane_defaults() -> None:
    config = GatewayConfig.model_validate(_config())
    version = config.models[0].versions[0]
    assert version.placement == "dedicated" and version.batching.max_in_flight == 2
    assert config.limits.max_body_bytes == 64 << 20


@pytest.mark.parametrize(
    ("doc", "field", "problem"),
    [
        ({"models": []}, "models", "list at least one model, or set a catalog"),
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
        # a model's name names folders (artifact stores, node caches): never a path step
        ({"models": [{"name": "..", "versions": [{"artifact": "/x"}]}]}, "models.0.name", "path"),
        ({"models": [{"name": ".", "versions": [{"artifact": "/x"}]}]}, "models.0.name", "path"),
        ({"models": [{"name": "a/b", "versions": [{"artifact": "/x"}]}]}, "models.0.name", "match"),
        (
            {"models": [{"name": "m", "versions": [{"artifact": "/x"}]}] * 2},
            "",
            "model names must be unique; repeated: m",
        ),
        (
            _config(versions=[{"uri": "models:/m/1", "follow": True}]),
            "models.0.versions.0",
            "follow: needs a 'uri' naming an alias",
        ),
        (
            _config(versions=[{"uri": "models:/m@a", "follow": True}] * 2),
            "models.0",
            "at most one version may follow an alias",
        ),
    ],
)
def test_bad_configs_name_the_field_and_the_problem(doc: dict, field: str, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        GatewayConfig.model_validate(doc)
    text = str(info.value)
    assert field in text and problem in text


def test_node_labels_become_rays_selector_with_a_fallback_anywhere_by_default() -> None:
    doc = _config(versions=[{"artifact": "/x", "nodes": {"labels": {"role": "in(model,gpu)"}}}])
    nodes = GatewayConfig.model_validate(doc).models[0].versions[0].nodes
    assert nodes is not None
    assert nodes.ray_options() == {
        "label_selector": {"role": "in(model,gpu)"},
        "fallback_strategy": [{"label_selector": {}}],
    }
    strict = {"labels": {"ray.io/node-group": "!head"}, "fallback": []}
    router = GatewayConfig.model_validate({**doc, "router": {"nodes": strict}}).router.nodes
    assert router is not None and router.ray_options()["fallback_strategy"] == []
    assert router.deployment_options() == {}
    spread = {"max_per_node": 1}  # no labels: any node, one replica each
    router = GatewayConfig.model_validate({**doc, "router": {"nodes": spread}}).router.nodes
    assert router is not None and router.ray_options() == {}
    assert router.deployment_options() == {"max_replicas_per_node": 1}


@pytest.mark.parametrize(
    ("nodes", "problem"),
    [
        ({"labels": {"bad key!": "x"}}, "'bad key!' is not a node label key"),
        ({"labels": {"role": "a b"}}, "labels[role]: 'a b' is not a label selector value"),
        ({"labels": {"role": "x"}, "fallback": [{"zone": "in(a"}]}, "fallback[0][zone]"),
        ({"max_per_node": 0}, "max_per_node"),
    ],
)
def test_a_bad_node_selector_is_refused_naming_it(nodes: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        GatewayConfig.model_validate(_config(versions=[{"artifact": "/x", "nodes": nodes}]))
    assert problem in str(raised.value) and "models.0.versions.0.nodes" in str(raised.value)


def test_an_autoscaled_dedicated_version_keeps_the_direct_transport() -> None:
    scaled = {"artifact": "/x", "autoscaling": {"min_replicas": 1, "max_replicas": 3}}
    versions = [scaled, {**scaled, "transport": "handle"}, {**scaled, "placement": "colocated"}]
    config = GatewayConfig.model_validate(_config(versions=versions))
    assert [v.direct for v in config.models[0].versions] == [True, False, False]
