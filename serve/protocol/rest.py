"""REST adapter: Open Inference Protocol v2 over HTTP, on Starlette's Request/Response.

It only converts: path and body in, `DataPlane` call, response out. Errors come back as
`{"error": "..."}` with the status from serve/core/errors.py's table.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from serve.core.auth import Access
from serve.core.config import Limits
from serve.core.dataplane import CatalogControl, DataPlane
from serve.core.errors import ErrorCode, InferenceError, MethodNotAllowedError, invalid
from serve.observe import exporter, statistics
from serve.protocol import openapi, rest_codec
from serve.protocol.routes import Route

logger = logging.getLogger("modelgate.rest")

VERSION_HEADER = "x-model-version"

Handler = Callable[[DataPlane, Request, dict[str, str], Limits], Awaitable[Response]]


async def _live(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    return JSONResponse({"live": True})


async def _ready(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    ready = plane.server_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def _server_metadata(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    return JSONResponse(plane.server_metadata())


async def _model_metadata(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    return JSONResponse(plane.model_metadata(p["model"], p.get("version")))


async def _model_ready(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    ready = plane.model_ready(p["model"], p.get("version"))
    return JSONResponse({"name": p["model"], "ready": ready}, status_code=200 if ready else 503)


async def _manifest(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    """The version's manifest: signature, provenance, parity, reference statistics."""
    target = plane.target(p["model"], p.get("version") or None)
    return Response(target.manifest.model_dump_json(), media_type="application/json")


async def _stats(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    """Triton's statistics, for every replica of the gateway on this node."""
    return JSONResponse(statistics.node_statistics(plane, p.get("model"), p.get("version")))


async def _routes(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    return JSONResponse(plane.routes())


async def _metrics(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    """The metrics of every gateway replica on this router's node, summed
    (serve/observe/exporter.py)."""
    plane.metrics.flush()  # this process's buffered series
    content = exporter.exposition(exporter.node_registry(plane.metrics.registry))
    return Response(content, media_type=CONTENT_TYPE_LATEST)


async def _openapi(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    """The API with the models the caller may see: with API keys on, those of its key (the
    model-metadata rule), so a stranger learns no model's name."""
    models = plane.visible_models(request.headers.get("authorization"))
    return JSONResponse(openapi.document(ROUTES, models))


async def _index(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    """Triton's repository index; `{"ready": true}` lists only the versions that are ready."""
    ready = False
    if _has_body(request):
        ready = _ready_only(await read_body(request, 1024, None, limits.body_timeout_s))
    return JSONResponse(plane.repository_index(ready_only=ready))


async def _load(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    """Triton's model control: load a model into the catalog (serve/control/catalog.py) and
    this replica's memory; answered once it is."""
    await _control_body(request, limits)
    await _catalog(plane).load(p["model"])
    return JSONResponse({})


async def _unload(
    plane: DataPlane, request: Request, p: dict[str, str], limits: Limits
) -> Response:
    """Triton's model control: remove a model from the catalog; answered once this replica
    dropped it."""
    await _control_body(request, limits)
    await _catalog(plane).unload(p["model"])
    return JSONResponse({})


def _catalog(plane: DataPlane) -> CatalogControl:
    if plane.catalog is None:
        raise invalid(
            "this gateway has no catalog: its models are its config's (set `catalog` in the "
            "application's args to load and unload models in place)"
        )
    return plane.catalog


async def _control_body(request: Request, limits: Limits) -> None:
    """A load or unload request's body: none, or a JSON object whose `parameters` are empty
    (Triton's config and file overrides are not taken: a model is what the registry holds)."""
    if not _has_body(request):
        return
    body = await read_body(request, 64 * 1024, None, limits.body_timeout_s)
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or set(doc) - {"parameters"}:
        raise invalid("a model control request's body is a JSON object with 'parameters' only")
    if doc.get("parameters"):
        raise invalid(
            "model control 'parameters' (config or file overrides) are not supported: a "
            "catalog model is what its registry or artifact folder holds"
        )


def _ready_only(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    ready = doc.get("ready", False) if isinstance(doc, dict) else None
    if not isinstance(ready, bool):
        raise invalid("a repository index request is a JSON object; its 'ready' true or false")
    return ready


def _has_body(request: Request) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class AsgiHeaders(Mapping[str, str]):
    """An ASGI scope's headers by lower-case name, decoded only when looked up: a request reads
    two or three. The first of repeated headers wins, as in starlette's Headers."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, name: str, default: Any = None) -> Any:
        key = name.encode("latin-1")
        for k, v in self._raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return cast(str, value)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1") for k, _ in self._raw))

    def __len__(self) -> int:
        return len({k for k, _ in self._raw})


async def _infer(plane: DataPlane, request: Request, p: dict[str, str], limits: Limits) -> Response:
    headers = AsgiHeaders(request.scope["headers"])
    plane.check_known(p["model"], p.get("version"), "http")  # 404 whatever the body holds
    body = await read_body(
        request, limits.max_body_bytes, headers.get("content-length"), limits.body_timeout_s
    )
    infer_request = rest_codec.decode_request(
        body,
        headers.get(rest_codec.HEADER_LENGTH),
        p["model"],
        p.get("version"),
        rest_codec.Limits(max_elements=limits.max_elements),
    )
    infer_request.headers = headers  # sticky routing keys
    response = await plane.infer(infer_request)
    content, head_length = rest_codec.encode_response(response)
    raw = [
        (b"content-length", str(len(content)).encode()),
        (b"content-type", _JSON if head_length is None else _OCTETS),
        (_VERSION_HEADER, response.version.encode("latin-1")),
    ]
    if head_length is not None:
        raw.append((_HEADER_LENGTH, str(head_length).encode()))
    return Answer(content, raw)


class Answer(Response):
    """A 200 whose headers come encoded: starlette's `init_headers` re-encodes and scans a
    dict's, ~1.5 µs a request. Sent as any starlette Response is (status, raw_headers, body)."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = raw_headers


_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_VERSION_HEADER = VERSION_HEADER.encode()
_HEADER_LENGTH = rest_codec.HEADER_LENGTH.encode()


_MODEL = "/v2/models/{model}[/versions/{version}]"
_READY_OK = openapi.ok_json(openapi.READY)

# Inference first: the hot path; no other route's path ends in /infer.
ROUTES: list[Route] = [
    Route(
        "POST",
        _MODEL + "/infer",
        _infer,
        Access.MODEL,
        "Run an inference (JSON, or Triton's binary tensor data extension).",
        openapi.INFER_OK,
        request_body=openapi.INFER_BODY,
        headers=(openapi.HEADER_LENGTH_PARAMETER,),
    ),
    Route("GET", "/v2/health/live", _live, Access.OPEN, "Server liveness.", openapi.OK_OBJECT),
    Route(
        "GET",
        "/v2/health/ready",
        _ready,
        Access.OPEN,
        "Server readiness.",
        _READY_OK,
        also={"503": openapi.ok_json(openapi.READY, "Not ready.")},
    ),
    Route("GET", "/v2[/]", _server_metadata, Access.OPEN, "Server metadata.", openapi.OK_OBJECT),
    Route("GET", "/v2/openapi.json", _openapi, Access.ANY_KEY, "This document.", openapi.OK_OBJECT),
    Route(
        "GET",
        "/v2/models/stats",
        _stats,
        Access.ADMIN,
        "Triton's statistics extension.",
        openapi.OK_OBJECT,
    ),
    Route(
        "GET", "/modelgate/routes", _routes, Access.ADMIN, "Routing in force.", openapi.OK_OBJECT
    ),
    Route(
        "GET",
        "/modelgate/models/{model}[/versions/{version}]/manifest",
        _manifest,
        Access.ADMIN,
        "The version's manifest.",
        openapi.OK_OBJECT,
    ),
    Route(
        "GET",
        "/metrics",
        _metrics,
        Access.OPEN,
        "Prometheus metrics of every gateway replica on this node.",
        openapi.OK_TEXT,
    ),
    Route(
        "POST",
        "/v2/repository/index",
        _index,
        Access.ADMIN,
        "Triton's repository index: every version with state READY or UNAVAILABLE.",
        openapi.ok_json({"type": "array", "items": {"type": "object"}}),
    ),
    Route(
        "POST",
        "/v2/repository/models/{model}/load",
        _load,
        Access.ADMIN,
        "Triton's model control: add the model to the catalog (its registry's alias version, "
        "else its latest) and load it; answered once this replica holds it.",
        openapi.OK_OBJECT,
    ),
    Route(
        "POST",
        "/v2/repository/models/{model}/unload",
        _unload,
        Access.ADMIN,
        "Triton's model control: remove the model from the catalog; answered once this "
        "replica no longer serves it.",
        openapi.OK_OBJECT,
    ),
    Route(
        "GET",
        _MODEL + "/ready",
        _model_ready,
        Access.MODEL,
        "Model readiness.",
        _READY_OK,
        also={"503": openapi.ok_json(openapi.READY, "Not ready.")},
    ),
    Route(
        "GET",
        _MODEL + "/stats",
        _stats,
        Access.ADMIN,
        "Triton's statistics extension.",
        openapi.OK_OBJECT,
    ),
    Route(
        "GET",
        _MODEL + "[/]",
        _model_metadata,
        Access.MODEL,
        "Model metadata.",
        openapi.ok_json({"$ref": "#/components/schemas/ModelMetadata"}),
    ),
]


async def handle(plane: DataPlane, request: Request, limits: Limits) -> Response:
    """Route one HTTP request; every error becomes `{"error": ...}` with its status."""
    try:
        handler, params, access = _match(request.method, app_path(request.scope))
        if plane.auth is not None:
            plane.authorize(access, request.headers.get("authorization"), params.get("model"))
        return await handler(plane, request, params, limits)
    except InferenceError as exc:
        return error_response(exc)
    except Exception:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(InferenceError(ErrorCode.INTERNAL, "internal error"))


def app_path(scope: MutableMapping[str, Any]) -> str:
    """The path below the application's route prefix (Ray Serve keeps it in root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


@functools.lru_cache(maxsize=256)
def _match(method: str, path: str) -> tuple[Handler, dict[str, str], Access]:
    """The route of a path: cached, since a gateway sees the same few paths (its handlers only
    read the parameters they get; an error is raised again, never cached). 256 paths at most:
    a flood of made-up paths only evicts, and holds at most 256 request lines.

    HEAD is answered as GET (the server sends no body for it); a 405 lists the methods the
    path takes, for its `Allow` header."""
    wanted = "GET" if method == "HEAD" else method
    allowed = []
    for route in ROUTES:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.method == wanted:
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            return route.handler, params, route.access
        allowed += [route.method, "HEAD"] if route.method == "GET" else [route.method]
    if allowed:
        raise MethodNotAllowedError(
            f"{method} not allowed on {path}; use {', '.join(allowed)}", allowed
        )
    raise InferenceError(ErrorCode.NOT_FOUND, f"no such endpoint: {method} {path}")


async def read_body(
    request: Request, limit: int, declared: str | None, timeout_s: float = 30.0
) -> bytes:
    """The body, refused with 413 past `limit` bytes (at once when its declared length is),
    and with 408 when it has not all arrived within `timeout_s`: a slow sender cannot hold a
    router's slot longer than that.

    Read from the ASGI messages themselves (starlette's `stream()` adds an async generator's
    cost per request); a client that goes away mid-body raises starlette's ClientDisconnect.
    A body that came whole with its head (the common case) sets no timer."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = _Body(request, limit)
    if await body.receive():
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                while await body.receive():
                    pass
        except TimeoutError:
            if not deadline.expired():
                raise
            raise InferenceError(
                ErrorCode.REQUEST_TIMEOUT,
                f"request body not received within {timeout_s:g} s ({body.size} bytes came)",
            ) from None
    if not body.chunks:
        raise invalid("request body is empty")
    return b"".join(body.chunks)  # one chunk: CPython returns it as it is, no copy


class _Body:
    __slots__ = ("chunks", "limit", "request", "size")

    def __init__(self, request: Request, limit: int) -> None:
        self.request, self.limit = request, limit
        self.chunks: list[bytes] = []
        self.size = 0

    async def receive(self) -> bool:
        """One ASGI message of the body; whether more follow."""
        message = await self.request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > self.limit:
            raise _too_large(self.size, self.limit)
        if chunk:
            self.chunks.append(chunk)
        return bool(message.get("more_body", False))


def _too_large(size: int, limit: int) -> InferenceError:
    return InferenceError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"request body of {size}+ bytes is over the limit of {limit} bytes",
    )


#: Errors answered before the request's body was read whole.
_BODY_LEFT_UNREAD = frozenset({ErrorCode.REQUEST_TIMEOUT, ErrorCode.PAYLOAD_TOO_LARGE})


def error_response(exc: InferenceError) -> Response:
    headers: dict[str, Any] = {}
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    if exc.code is ErrorCode.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"
    if isinstance(exc, MethodNotAllowedError):
        headers["allow"] = ", ".join(exc.allowed)
    if exc.code in _BODY_LEFT_UNREAD:  # the connection cannot carry another request
        headers["connection"] = "close"
    return Response(
        json.dumps({"error": exc.shown()}),
        status_code=exc.http_status,
        headers=headers,
        media_type="application/json",
    )
