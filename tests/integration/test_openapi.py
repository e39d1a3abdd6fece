"""Schemathesis against the gateway's own OpenAPI document: requests generated from it, valid
and invalid, never get a 5xx or an answer the document does not declare; the router replica
that took them is the same process afterwards, and its memory grew by less than a bound."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.integration.conftest import APP, Gateway, replica_pids, rss_bytes

MEMORY_BOUND = 200 << 20  # bytes a router may grow by while it is fuzzed
EXAMPLES = 25  # per operation and generation mode


@pytest.fixture(scope="module")
def router(gateway: Gateway) -> dict[str, Any]:
    pids = replica_pids(APP, "Router")
    return {"pids": pids, "rss": {pid: rss_bytes(pid) for pid in pids}}


def test_generated_requests_get_declared_answers_and_never_a_5xx(
    gateway: Gateway, router: dict[str, Any]
) -> None:
    """Every operation, with valid and invalid requests generated from the document; each
    answer passes schemathesis' checks: no 5xx, a declared status, content type, headers and
    body schema, invalid requests refused with a 4xx.
    All but one check: "a schema-valid request is accepted" cannot hold for this protocol,
    whose requests are valid only against the signature of the model they name (tensor names,
    datatypes, shapes matching the data): those are refused with a 400 that names the tensor.
    (Driven through schemathesis' Python API: its pytest plugin predates pytest 9.)"""
    schema = schemathesis.openapi.from_url(f"{gateway.base}/v2/openapi.json")
    failures: list[str] = []
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(
                    base_url=gateway.base, timeout=30, excluded_checks=[positive_data_acceptance]
                )

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
            except BaseExceptionGroup as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    doc = requests.get(f"{gateway.base}/v2/openapi.json", timeout=10).json()
    declared = {
        f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops if m != "parameters"
    }
    assert declared - set(labels) <= {"GET /v2/openapi.json"}  # schemathesis skips the document
    assert not failures, "\n\n".join(failures)


def test_the_fuzzed_router_is_the_same_process_and_grew_within_bounds(
    gateway: Gateway, router: dict[str, Any]
) -> None:
    assert replica_pids(APP, "Router") == router["pids"]
    for pid, before in router["rss"].items():
        assert rss_bytes(pid) - before < MEMORY_BOUND
    assert requests.get(f"{gateway.base}/v2/health/ready", timeout=10).status_code == 200


def test_the_document_names_the_served_models(gateway: Gateway) -> None:
    doc = requests.get(f"{gateway.base}/v2/openapi.json", timeout=10).json()
    infer = doc["paths"]["/v2/models/{model}/infer"]
    model = next(p for p in infer["parameters"] if p["name"] == "model")
    assert set(model["schema"]["enum"]) == {"breast_cancer", "iris", "churn"}
    assert {"200", "400", "404", "413", "503", "504"} <= set(infer["post"]["responses"])
