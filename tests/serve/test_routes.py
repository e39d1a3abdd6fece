"""One route table (serve/protocol/rest.py: ROUTES) drives dispatch, the 405's Allow and the
OpenAPI document: every documented operation dispatches to its route, and nothing else does."""

from __future__ import annotations

import re

import pytest

from serve.core.auth import Access
from serve.core.errors import STATUS, MethodNotAllowedError
from serve.protocol import openapi, rest
from serve.protocol.routes import Route


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: f"{m.group(1)}-x", path)


def test_every_documented_operation_dispatches_to_its_route_with_its_parameters() -> None:
    doc = openapi.document(rest.ROUTES, ["m"])
    operations = 0
    for route in rest.ROUTES:
        for path in route.documented_paths():
            assert route.method.lower() in doc["paths"][path]
            handler, params, access = rest._match(route.method, _concrete(path))
            assert (handler, access) == (route.handler, route.access), path
            assert params == {n: f"{n}-x" for n in re.findall(r"\{(\w+)\}", path)}
            operations += 1
    documented = sum(len([m for m in ops if m != "parameters"]) for ops in doc["paths"].values())
    assert documented == operations


def test_every_operation_declares_every_error_status_of_the_error_table() -> None:
    statuses = {str(http) for http, _ in STATUS.values()}
    for ops in openapi.document(rest.ROUTES, [])["paths"].values():
        for method, operation in ops.items():
            if method != "parameters":
                assert statuses <= set(operation["responses"]), method


def test_a_template_matches_its_optional_parts_and_documents_each_form() -> None:
    route = Route(
        "GET",
        "/v2/models/{model}[/versions/{version}][/]",
        print,
        Access.MODEL,
        "x",
        openapi.OK_OBJECT,
    )
    assert sorted(route.documented_paths()) == [
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
    ]
    for path in ("/v2/models/a", "/v2/models/a/", "/v2/models/a/versions/2"):
        assert route.pattern.fullmatch(path), path
    for path in ("/v2/models/a/b", "/v2/models/", "/v2/models/a/versions/"):
        assert not route.pattern.fullmatch(path), path


def test_a_wrong_method_lists_what_the_path_takes() -> None:
    with pytest.raises(MethodNotAllowedError) as raised:
        rest._match("DELETE", "/v2/health/ready")
    assert raised.value.allowed == ["GET", "HEAD"]
