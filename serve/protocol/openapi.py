"""The gateway's HTTP API as an OpenAPI 3.0 document, served at `GET /v2/openapi.json`.

The operations come from the route table (serve/protocol/rest.py: ROUTES), the error statuses
from the error table (serve/core/errors.py: STATUS), the datatypes from the signature's
(converters/spec.py); the schemas follow the Open Inference Protocol's REST spec (KServe's
`open_inference_rest.yaml`) plus Triton's binary-data, statistics and repository extensions. The
`model` path parameter lists the models this router serves, so that tools generating requests
from the document (schemathesis in tests/integration/test_openapi.py) reach real models as well
as unknown ones. Every status an endpoint can answer is declared, with `{"error": "..."}` bodies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from converters.spec import DATATYPE_TO_NUMPY
from serve.core.dataplane import SERVER_VERSION
from serve.core.errors import STATUS

if TYPE_CHECKING:
    from serve.protocol.routes import Route

_ERROR = {"$ref": "#/components/responses/Error"}
#: Every status an error can have, each answered as `{"error": "..."}`.
_ERRORS = {str(status): _ERROR for status in sorted({http for http, _ in STATUS.values()})}
READY = {"type": "object", "properties": {"ready": {"type": "boolean"}}}


def _array_of(schema: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}


def ok_json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OK_OBJECT = ok_json({"type": "object"})
OK_TEXT = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
INFER_OK = {
    "description": "The outputs (binary outputs follow the JSON header).",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
INFER_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
HEADER_LENGTH_PARAMETER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Binary extension: length of the JSON header before the raw tensors.",
    "schema": {"type": "integer", "minimum": 0},
}


def _schemas() -> dict[str, Any]:
    tensor_data = {
        "description": "Row-major tensor contents, flat or nested as the shape.",
        "type": "array",
        "items": {},
    }
    parameters = {"type": "object", "additionalProperties": True}
    return {
        "Parameters": parameters,
        "RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(DATATYPE_TO_NUMPY)},
                "parameters": parameters,
                "data": tensor_data,
            },
        },
        "RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": parameters},
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": parameters,
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/components/schemas/RequestInput"},
                },
                "outputs": _array_of("RequestOutput"),
            },
        },
        "ResponseOutput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string"},
                "parameters": parameters,
                "data": tensor_data,
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": _array_of("ResponseOutput"),
            },
        },
        "TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": _array_of("TensorMetadata"),
                "outputs": _array_of("TensorMetadata"),
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
    }


def document(routes: Sequence[Route], models: list[str]) -> dict[str, Any]:
    """The OpenAPI document of `routes`, for a router serving `models`."""
    model = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(models)} if models else {"type": "string"},
    }
    paths: dict[str, Any] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": {"200": route.ok, **_ERRORS, **route.also},
        }
        if route.request_body is not None:
            operation["requestBody"] = route.request_body
        if route.headers:
            operation["parameters"] = list(route.headers)
        for path in route.documented_paths():
            entry = paths.setdefault(path, {})
            entry[route.method.lower()] = operation
            names = re.findall(r"\{(\w+)\}", path)
            if names:
                entry["parameters"] = [model if n == "model" else _path_parameter(n) for n in names]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "modelgate: Open Inference Protocol v2",
            "version": SERVER_VERSION,
            "description": "KServe v2 / Triton-compatible inference over HTTP. With API keys "
            "on, send `Authorization: Bearer <key>`.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {
                "Error": ok_json({"$ref": "#/components/schemas/Error"}, "An error, named.")
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
