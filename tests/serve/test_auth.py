"""API keys: digests only in the config, 401 without a known key, 403 outside its rights."""

from __future__ import annotations

import pytest

from serve.core.auth import Access, ApiKey, AuthConfig, Authenticator, digest, new_key
from serve.core.errors import ErrorCode, InferenceError
from serve.protocol.rest import ROUTES

IRIS, ADMIN, ANY = new_key(), new_key(), new_key()
AUTH = Authenticator(
    AuthConfig(
        keys=[
            ApiKey(name="iris-app", sha256=IRIS[1], models=["iris"]),
            ApiKey(name="ops", sha256=ADMIN[1], models=[], admin=True),
            ApiKey(name="all-models", sha256=ANY[1]),
        ]
    )
)


def _code(access: Access, authorization: str | None, model: str | None = None) -> ErrorCode:
    with pytest.raises(InferenceError) as caught:
        AUTH.check(access, authorization, model)
    return caught.value.code


def test_a_key_opens_what_it_is_for_and_nothing_else() -> None:
    AUTH.check(Access.MODEL, f"Bearer {IRIS[0]}", "iris")
    AUTH.check(Access.MODEL, f"bearer {ANY[0]}", "churn")  # '*' and a lower-case scheme
    AUTH.check(Access.ADMIN, f"Bearer {ADMIN[0]}")
    assert _code(Access.MODEL, f"Bearer {IRIS[0]}", "churn") is ErrorCode.PERMISSION_DENIED
    assert _code(Access.ADMIN, f"Bearer {IRIS[0]}") is ErrorCode.PERMISSION_DENIED
    assert _code(Access.MODEL, f"Bearer {ADMIN[0]}", "iris") is ErrorCode.PERMISSION_DENIED


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", f"Bearer {IRIS[0]}x"])
def test_missing_or_unknown_keys_are_unauthenticated(header: str | None) -> None:
    assert _code(Access.MODEL, header, "iris") is ErrorCode.UNAUTHENTICATED


def test_open_endpoints_need_no_key_and_messages_never_carry_one() -> None:
    AUTH.check(Access.OPEN, None)
    with pytest.raises(InferenceError) as caught:
        AUTH.check(Access.MODEL, f"Bearer {IRIS[0]}", "churn")
    assert IRIS[0] not in caught.value.message and "iris-app" in caught.value.message


def test_keys_are_stored_as_digests() -> None:
    token, hashed = new_key()
    assert hashed == digest(token) and len(hashed) == 64 and token not in hashed
    with pytest.raises(ValueError):
        ApiKey(name="x", sha256=token)  # a raw key is refused where a digest belongs


def test_every_route_declares_its_access() -> None:
    levels = {route.path: route.access for route in ROUTES}
    assert levels["/v2/health/live"] is Access.OPEN
    assert levels["/v2/repository/index"] is Access.ADMIN
    assert all(isinstance(a, Access) for a in levels.values())


def test_the_api_document_needs_a_key_and_lists_only_its_models() -> None:
    models = ["iris", "wine"]
    assert _code(Access.ANY_KEY, None) is ErrorCode.UNAUTHENTICATED
    AUTH.check(Access.ANY_KEY, f"Bearer {IRIS[0]}")
    assert AUTH.visible(f"Bearer {IRIS[0]}", models) == ["iris"]
    assert AUTH.visible(f"Bearer {ADMIN[0]}", models) == []
    assert AUTH.visible(f"Bearer {ANY[0]}", models) == models
    with pytest.raises(InferenceError):
        AUTH.visible("Bearer nope", models)
