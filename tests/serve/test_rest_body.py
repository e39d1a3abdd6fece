"""The infer route's body reading and route matching, on plain ASGI messages (no Ray)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from serve.core.errors import ErrorCode, InferenceError
from serve.protocol import rest


def _request(messages: list[dict[str, Any]]) -> tuple[Request, list[dict[str, Any]]]:
    """A request whose body arrives as `messages`; the list left is what was not received."""
    left = list(messages)

    async def receive() -> dict[str, Any]:
        return left.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    return Request(scope, receive), left


def _chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


def _read(messages: list[dict[str, Any]], limit: int = 100, declared: str | None = None) -> bytes:
    request, _ = _request(messages)
    return asyncio.run(rest.read_body(request, limit, declared))


def test_a_body_in_chunks_is_joined_and_empty_chunks_are_skipped() -> None:
    assert _read(_chunks(b'{"in', b"", b'puts": []}')) == b'{"inputs": []}'
    assert _read(_chunks(b"one chunk")) == b"one chunk"


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request, left = _request(_chunks(b"x" * 10))
    with pytest.raises(InferenceError) as caught:
        asyncio.run(rest.read_body(request, 5, "10"))
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "10+ bytes is over the limit of 5 bytes" in caught.value.message
    assert len(left) == 1  # nothing was received


def test_a_streamed_body_over_the_limit_is_refused_at_the_chunk_that_crosses_it() -> None:
    request, left = _request(_chunks(b"x" * 60, b"y" * 60, b"z" * 60))
    with pytest.raises(InferenceError) as caught:
        asyncio.run(rest.read_body(request, 100, None))  # chunked: no length declared
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert "120+ bytes" in caught.value.message
    assert len(left) == 1  # the third chunk was never read


def test_an_empty_body_is_a_bad_request() -> None:
    with pytest.raises(InferenceError) as caught:
        _read(_chunks(b""))
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "empty" in caught.value.message


def test_a_client_that_goes_away_mid_body_raises_client_disconnect() -> None:
    with pytest.raises(ClientDisconnect):
        _read(
            [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
        )


def test_matching_is_cached_yet_every_unknown_path_or_method_fails_each_time() -> None:
    first = rest._match("POST", "/v2/models/iris/versions/2/infer")
    assert first[1] == {"model": "iris", "version": "2"}
    assert rest._match("POST", "/v2/models/iris/versions/2/infer") is first
    assert rest._match("POST", "/v2/models/wine/infer")[1] == {"model": "wine"}
    for _ in range(2):
        with pytest.raises(InferenceError) as wrong_method:
            rest._match("GET", "/v2/models/iris/infer")
        assert wrong_method.value.code is ErrorCode.METHOD_NOT_ALLOWED
        with pytest.raises(InferenceError) as unknown:
            rest._match("GET", "/v3/nothing")
        assert unknown.value.code is ErrorCode.NOT_FOUND


def test_a_405_lists_the_methods_the_path_takes_and_head_is_answered_as_get() -> None:
    with pytest.raises(InferenceError) as info:
        rest._match("DELETE", "/v2/models/iris")
    assert info.value.code is ErrorCode.METHOD_NOT_ALLOWED
    assert rest.error_response(info.value).headers["allow"] == "GET, HEAD"
    with pytest.raises(InferenceError) as post_only:
        rest._match("GET", "/v2/models/iris/infer")
    assert rest.error_response(post_only.value).headers["allow"] == "POST"
    for path in ("/v2", "/v2/health/ready", "/v2/models/iris/versions/2", "/metrics"):
        assert rest._match("HEAD", path)[0] is rest._match("GET", path)[0]


def test_an_error_echoing_a_huge_name_is_capped() -> None:
    error = InferenceError(ErrorCode.NOT_FOUND, "unknown model '" + "m" * 10_000 + "'")
    message = json.loads(rest.error_response(error).body)["error"]
    assert len(message) == 1000 and message.startswith("unknown model 'mmm")
    assert message.endswith("…")


def test_a_body_that_stops_arriving_is_refused_at_its_deadline_with_408() -> None:
    async def main() -> InferenceError:
        first = {"type": "http.request", "body": b'{"inp', "more_body": True}
        sent = [first]

        async def receive() -> dict[str, Any]:
            if sent:
                return sent.pop()
            await asyncio.sleep(3600)  # a slow sender: the rest never comes
            raise AssertionError("unreachable")

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        started = asyncio.get_running_loop().time()
        with pytest.raises(InferenceError) as info:
            await rest.read_body(Request(scope, receive), 100, None, timeout_s=0.2)
        assert asyncio.get_running_loop().time() - started >= 0.2  # not before its deadline
        return info.value

    error = asyncio.run(main())
    assert error.code is ErrorCode.REQUEST_TIMEOUT and error.http_status == 408
    assert "not received within 0.2 s (5 bytes came)" in error.message


# -- Triton's model control: its body, and a gateway without a catalog -----------------------------
def _control(body: bytes, with_catalog: bool = True) -> InferenceError | None:
    from serve.core.config import Limits
    from serve.observe.metrics import GatewayMetrics
    from tests.serve.factories import metered_plane

    class Catalog:
        async def load(self, model: str) -> None:
            pass

        async def unload(self, model: str) -> None:
            pass

        def describe(self, model: str) -> dict[str, Any]:
            return {}

    plane = metered_plane(GatewayMetrics())
    plane.catalog = Catalog() if with_catalog else None
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/repository/models/m/load",
        "headers": [(b"content-length", str(len(body)).encode())],
    }
    messages = _chunks(body)

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    response = asyncio.run(rest.handle(plane, Request(scope, receive), Limits()))
    if response.status_code == 200:
        return None
    doc = json.loads(bytes(response.body))
    return InferenceError(ErrorCode.INVALID_ARGUMENT, f"{response.status_code}: {doc['error']}")


def test_model_control_takes_an_empty_body_and_names_what_it_refuses() -> None:
    assert _control(b"") is None and _control(b"{}") is None
    assert _control(b'{"parameters": {}}') is None
    for body, says in (
        (b"not json", "400: a model control request's body is a JSON object"),
        (b"[1, 2]", "400: a model control request's body is a JSON object"),
        (b'{"other": 1}', "400: a model control request's body is a JSON object"),
        (b'{"parameters": {"config": "{}"}}', "400: model control 'parameters'"),
        (b"x" * (64 * 1024 + 1), "413:"),
    ):
        refused = _control(body)
        assert refused is not None and says in refused.message, (body[:20], refused)
    without = _control(b"", with_catalog=False)
    assert without is not None and "400: this gateway has no catalog" in without.message
