"""The gateway's HTTP API as an OpenAPI 3.0 document, served at `GET /v2/openapi.json`.

Written from the Open Inference Protocol's REST spec (KServe's `open_inference_rest.yaml`) plus
Triton's binary-data, statistics and repository extensions and modelgate's own endpoints. The
`model` path parameter lists the models this router serves, so that tools generating requests
from the document (schemathesis in tests/integration/test_openapi.py) reach real models as well
as unknown ones. Every status an endpoint can answer is declared, with `{"error": "..."}` bodies.
"""

from __future__ import annotations

from typing import Any

from serve.core.dataplane import SERVER_VERSION

_ERROR = {"$ref": "#/components/responses/Error"}
_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "403": _ERROR,
    "404": _ERROR,
    "405": _ERROR,
    "413": _ERROR,
    "500": _ERROR,
    "503": _ERROR,
    "504": _ERROR,
}
_READY = {"type": "object", "properties": {"ready": {"type": "boolean"}}}


def _array_of(schema: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": ok, **_ERRORS}, **extra}


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
                "datatype": {
                    "type": "string",
                    "enum": [
                        "BOOL",
                        "UINT8",
                        "UINT16",
                        "UINT32",
                        "UINT64",
                        "INT8",
                        "INT16",
                        "INT32",
                        "INT64",
                        "FP16",
                        "FP32",
                        "FP64",
                        "BYTES",
                    ],
                },
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


def document(models: list[str]) -> dict[str, Any]:
    """The OpenAPI document for a router serving `models`."""
    model = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(models)} if models else {"type": "string"},
    }
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    infer = _op(
        "Run an inference (JSON, or Triton's binary tensor data extension).",
        {
            "description": "The outputs (binary outputs follow the JSON header).",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    )
    infer["parameters"] = [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Binary extension: length of the JSON header before the raw tensors.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ]
    metadata = _op("Model metadata.", _json({"$ref": "#/components/schemas/ModelMetadata"}))
    ready = _op("Model readiness.", _json(_READY))
    ready["responses"]["503"] = _json(_READY, "Not ready.")
    server_ready = _op("Server readiness.", _json(_READY))
    server_ready["responses"]["503"] = _json(_READY, "Not ready.")
    stats = _op("Triton's statistics extension.", _json({"type": "object"}))
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("Server liveness.", _json({"type": "object"}))},
        "/v2/health/ready": {"get": server_ready},
        "/v2": {"get": _op("Server metadata.", _json({"type": "object"}))},
        "/v2/openapi.json": {"get": _op("This document.", _json({"type": "object"}))},
        "/v2/models/stats": {"get": stats},
        "/v2/repository/index": {
            "post": _op(
                "Triton's repository index: every version with state READY or UNAVAILABLE.",
                _json({"type": "array", "items": {"type": "object"}}),
            )
        },
        "/modelgate/routes": {"get": _op("Routing in force.", _json({"type": "object"}))},
        "/metrics": {
            "get": _op(
                "Prometheus metrics of every gateway replica on this node.",
                {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            )
        },
    }
    for prefix, params in (
        ("/v2/models/{model}", [model]),
        ("/v2/models/{model}/versions/{version}", [model, version]),
    ):
        paths[prefix] = {"get": metadata, "parameters": params}
        paths[prefix + "/ready"] = {"get": ready, "parameters": params}
        paths[prefix + "/stats"] = {"get": stats, "parameters": params}
        paths[prefix + "/infer"] = {"post": infer, "parameters": params}
        manifest = _op("The version's manifest.", _json({"type": "object"}))
        paths[prefix.replace("/v2/models", "/modelgate/models") + "/manifest"] = {
            "get": manifest,
            "parameters": params,
        }
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
                "Error": _json({"$ref": "#/components/schemas/Error"}, "An error, named.")
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
