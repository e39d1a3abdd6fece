"""The serving path's one error type, and the one table that maps it onto HTTP and gRPC.

InferenceError(code, message)
  code: INVALID_ARGUMENT   bad tensor name / datatype / shape / framing   → 400 / INVALID_ARGUMENT
        UNAUTHENTICATED    no API key, or an unknown one                  → 401 / UNAUTHENTICATED
        PERMISSION_DENIED  a key not allowed for this model or endpoint   → 403 / PERMISSION_DENIED
        NOT_FOUND          unknown model or version                       → 404 / NOT_FOUND
        METHOD_NOT_ALLOWED a known path with the wrong HTTP method        → 405 / UNIMPLEMENTED
        REQUEST_TIMEOUT    the request's body did not arrive in time      → 408 / DEADLINE_EXCEEDED
        PAYLOAD_TOO_LARGE  body or tensor over a configured limit         → 413 / RESOURCE_EXHAUSTED
        OVERLOADED         queue full: shed now, retry later              → 503 / UNAVAILABLE
        DEADLINE_EXCEEDED  the request's deadline passed before compute   → 504 / DEADLINE_EXCEEDED
        UNAVAILABLE        the version is not ready                       → 503 / UNAVAILABLE
        INTERNAL           a bug or a runtime failure                     → 500 / INTERNAL
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


#: code -> (HTTP status, gRPC status code's name). Every code must be here (a test checks). The gRPC
#: adapter turns the name into grpc.StatusCode (serve/protocol/grpc_codec.py), so the core needs no
#: grpc.
STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "INVALID_ARGUMENT"),
    ErrorCode.UNAUTHENTICATED: (401, "UNAUTHENTICATED"),
    ErrorCode.PERMISSION_DENIED: (403, "PERMISSION_DENIED"),
    ErrorCode.NOT_FOUND: (404, "NOT_FOUND"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "UNIMPLEMENTED"),
    ErrorCode.REQUEST_TIMEOUT: (408, "DEADLINE_EXCEEDED"),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, "RESOURCE_EXHAUSTED"),
    ErrorCode.OVERLOADED: (503, "UNAVAILABLE"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "DEADLINE_EXCEEDED"),
    ErrorCode.UNAVAILABLE: (503, "UNAVAILABLE"),
    ErrorCode.INTERNAL: (500, "INTERNAL"),
}


#: Longest error message answered, in characters.
MAX_SHOWN = 1000


class InferenceError(Exception):
    """An error answered to the caller in the protocol's own form."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[object, tuple[object, ...], dict[str, object]]:
        # Travels between Ray processes intact (Exception pickles only `args` by default).
        return (InferenceError, (self.code, self.message), {"retry_after_s": self.retry_after_s})

    def shown(self) -> str:
        """The message as answered: at most MAX_SHOWN characters, so that an error echoing a
        10 KB model name stays readable (and fits gRPC's status header)."""
        if len(self.message) <= MAX_SHOWN:
            return self.message
        return self.message[: MAX_SHOWN - 1] + "…"

    @property
    def http_status(self) -> int:
        return STATUS[self.code][0]

    @property
    def grpc_status_name(self) -> str:
        """The gRPC status code's name (grpc.StatusCode[name] in the gRPC adapter)."""
        return STATUS[self.code][1]


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> InferenceError:
    return InferenceError(ErrorCode.NOT_FOUND, message)


class MethodNotAllowedError(InferenceError):
    """A known path asked with a method it does not take; `allowed` goes out as `Allow`."""

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(ErrorCode.METHOD_NOT_ALLOWED, message)
        self.allowed = allowed

    def __reduce__(self) -> tuple[object, tuple[object, ...], dict[str, object]]:
        return (MethodNotAllowedError, (self.message, self.allowed), {})


class OverloadedError(InferenceError):
    """A bounded queue is full: the request is shed at once, with the numbers that say why."""

    def __init__(self, target: str, queued: int, limit: int, retry_after_s: float = 1.0):
        self.target = target
        super().__init__(
            ErrorCode.OVERLOADED,
            f"{target} is overloaded: {queued} requests queued, limit {limit}; retry later",
            retry_after_s=retry_after_s,
        )
        self.queued = queued
        self.limit = limit

    def __reduce__(self) -> tuple[object, tuple[object, ...], dict[str, object]]:
        return (
            OverloadedError,
            (self.target, self.queued, self.limit, self.retry_after_s or 1.0),
            {},
        )


class BehindTargetError(OverloadedError):
    """Shed because the answer would come after the version's latency target (a request
    admitted now, or one whose wait in the queue has used up its share)."""

    def __init__(self, target: str, predicted_s: float, target_s: float, queued: int):
        InferenceError.__init__(
            self,
            ErrorCode.OVERLOADED,
            f"{target} is overloaded: its answer would come in about {predicted_s * 1000:.0f} "
            f"ms, past the version's latency target of {target_s * 1000:.0f} ms "
            f"({queued} requests queued); retry later",
            retry_after_s=1.0,
        )
        self.target, self.queued, self.limit = target, queued, queued
        self.predicted_s, self.target_s = predicted_s, target_s

    def __reduce__(self) -> tuple[object, tuple[object, ...], dict[str, object]]:
        return (BehindTargetError, (self.target, self.predicted_s, self.target_s, self.queued), {})
