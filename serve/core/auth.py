"""Optional API keys: bearer tokens for inference (per-key allowed models) and for management.

Keys live in the config only as SHA-256 digests (`modelgate api-key` makes one); a presented
token is hashed and compared with every configured digest in constant time
(`hmac.compare_digest`, no early exit), and it is never logged. Access levels:
  OPEN   health, server metadata, /metrics (for load balancers and Prometheus)
  ANY_KEY  the OpenAPI document: any known key (it lists only the key's models)
  MODEL  infer, model metadata and readiness: a key whose `models` include the model
  ADMIN  repository index, statistics, routes, manifests: an admin key
Missing or unknown token → 401 / UNAUTHENTICATED; a key not allowed here → 403 /
PERMISSION_DENIED.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from pydantic import BaseModel, ConfigDict, Field

from serve.core.errors import ErrorCode, InferenceError


class Access(enum.Enum):
    OPEN = "open"
    ANY_KEY = "any_key"
    MODEL = "model"
    ADMIN = "admin"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Who holds the key (for people; never the key itself).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex.")
    models: list[str] = Field(
        default_factory=lambda: ["*"], description="Models the key may use; '*' for all."
    )
    admin: bool = Field(False, description="Management endpoints too.")


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(min_length=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and the digest to put in the config."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.keys = config.keys

    def check(self, access: Access, authorization: str | None, model: str | None = None) -> None:
        if access is Access.OPEN:
            return
        key = self._identify(authorization)
        if access is Access.ANY_KEY:
            return
        if access is Access.ADMIN:
            if not key.admin:
                raise InferenceError(
                    ErrorCode.PERMISSION_DENIED, f"key '{key.name}' is not an admin key"
                )
            return
        if "*" not in key.models and model not in key.models:
            raise InferenceError(
                ErrorCode.PERMISSION_DENIED, f"key '{key.name}' may not use model '{model}'"
            )

    def visible(self, authorization: str | None, models: list[str]) -> list[str]:
        """The models a key may use, among `models` (401 without a known key)."""
        key = self._identify(authorization)
        return list(models) if "*" in key.models else [m for m in models if m in key.models]

    def _identify(self, authorization: str | None) -> ApiKey:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InferenceError(
                ErrorCode.UNAUTHENTICATED, "an API key is required: Authorization: Bearer <key>"
            )
        presented = digest(token.strip()).encode()
        found = None
        for key in self.keys:  # every digest compared, in constant time each
            if hmac.compare_digest(presented, key.sha256.encode()):
                found = key
        if found is None:
            raise InferenceError(ErrorCode.UNAUTHENTICATED, "unknown API key")
        return found
