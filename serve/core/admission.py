"""modelgate's own admission: a bound on the requests in one router replica at once."""

from __future__ import annotations

from serve.core.errors import OverloadedError


class Admission:
    """modelgate's own admission, in front of Ray Serve's: at most `limit` requests in a
    router replica at once (being read, queued or computed); one more is refused at once with
    503 + Retry-After, in the protocol's form. Ray Serve's limit on the replica is set above
    this one (`ray_limits`), so that a full router answers rather than Ray queueing without
    bound or refusing in plain text."""

    __slots__ = ("admitted", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted = 0

    def enter(self) -> bool:
        if self.admitted >= self.limit:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    def refusal(self) -> OverloadedError:
        return OverloadedError("this router replica", self.admitted, self.limit)
