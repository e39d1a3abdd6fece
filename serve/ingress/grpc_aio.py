"""A grpc.aio server that keeps up on a busy event loop (issue 16: gRPC beside HTTP).

A router's event loop, loaded with HTTP, passes a few times a second: a batch's answers resume
together, and each pass runs hundreds of steps. grpc.aio (1.85) then moved gRPC calls along at
about one every two passes, whatever the number of callers: 7 gRPC req/s beside 955 HTTP, p99 8 s.
Two things in grpc.aio hold it to that, and `keep_up` mends both:

- **Core's completions reach the loop one a pass.** grpc.aio's poller thread takes each
  completion from gRPC Core, queues it and writes one byte to a socket pair; the loop's reader
  reads *one* byte and then handles every queued completion. On a loop that handles more than
  one completion a pass, unread bytes pile up until the socket's buffer is full (a few hundred);
  from then on the poller blocks in `write` and hands over one completion per byte read: one a
  pass. `keep_up` reads the surplus bytes on a second descriptor of the same socket (always
  leaving one, so grpc.aio's own reader still runs and handles the queue): the poller never
  blocks, and a pass handles every completion that has come. (grpcio's main branch reads the
  socket in bulk; no release has it yet.)
- **The server asks Core for a method's next call only once the last one is handed on**: a
  call a few passes. `keep_up` keeps `depth` more requests for each registered method's next
  call outstanding in Core, each handing the call it gets to grpc.aio's own handling (the
  coroutines grpc.aio's own loop runs: method lookup, deadline, cancellation, status, errors)
  and asking again, so a pass takes every call that has come, as uvicorn does for HTTP.

Either alone changes little (an event loop taking 50 ms a pass, 100 callers: 4 req/s as
grpc.aio is, 10 with calls taken ahead, 3 with the socket read; 297 with both).

This is the one module that reaches into grpcio's internals: `cygrpc._BoundEventLoop`
(`loop`, `read_socket`) and `AioServer._request_registered_call`, `_MethodResolver`,
`_handle_rpc` and `_schedule_rpc_coro`, as in grpcio 1.85. Where they are not as expected,
`keep_up` logs so and leaves the server as grpc.aio made it (it serves; gRPC starves beside
HTTP again, and tests/serve/test_grpc_aio.py and
tests/integration/test_grpc.py::test_grpc_beside_http_gets_its_share_of_a_loaded_router fail).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import socket
import termios
import time
from typing import Any

logger = logging.getLogger("modelgate.lean")

#: Requests for a method's next call kept outstanding in Core beside grpc.aio's own one.
DEPTH = 64


class Registering:
    """Stands for a grpc.aio server while services register on it, and keeps the registered
    methods' handlers (by full name, "/service/method"): `keep_up` needs them, and grpc.aio
    keeps them out of reach."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.registered: dict[str, Any] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class KeptUp:
    """`keep_up`'s work for one started server on the running loop; `close` ends it."""

    def __init__(self, server: Any, registered: dict[str, Any], depth: int) -> None:
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._core = server._server  # cygrpc.AioServer
        self._resolver = cygrpc._MethodResolver([], dict(registered))
        self._loop = asyncio.get_running_loop()
        self._wakeups = self._second_descriptor()
        self._count = array.array("i", [0])
        self._loop.add_reader(self._wakeups.fileno(), self._read_surplus)
        self._calls: set[asyncio.Task[None]] = set()
        self.taken = 0  # calls taken ahead (the rest, by grpc.aio's own loop)
        self._takers = [
            self._loop.create_task(self._take(method.encode()), name=f"take-ahead {method}")
            for method in registered
            for _ in range(depth)
        ]

    def _second_descriptor(self) -> socket.socket:
        """A second descriptor of the socket grpc.aio's poller wakes this loop through."""
        bound = [
            each
            for each in gc.get_objects()
            if isinstance(each, self._cygrpc._BoundEventLoop) and each.loop is self._loop
        ]
        if len(bound) != 1:
            raise LookupError(f"{len(bound)} grpc.aio wake-up sockets for this loop")
        wakeups = socket.socket(fileno=os.dup(bound[0].read_socket.fileno()))
        wakeups.setblocking(False)
        return wakeups

    def _read_surplus(self) -> None:
        """Every unread wake-up byte but one: the one left keeps grpc.aio's own reader due,
        which then handles every completion queued before it (each is queued before its byte
        is written), so no completion waits on a byte read here."""
        fcntl.ioctl(self._wakeups.fileno(), termios.FIONREAD, self._count)
        if self._count[0] > 1:
            with contextlib.suppress(BlockingIOError):
                self._wakeups.recv(self._count[0] - 1)

    async def _take(self, method: bytes) -> None:
        name = method.decode()
        while True:
            try:
                state = await self._core._request_registered_call(method)
            except Exception:  # the server shuts down: Core fails the request
                return
            self.taken += 1
            handling = self._cygrpc._handle_rpc(name, self._resolver, (), state, self._loop, False)
            call = self._loop.create_task(
                self._cygrpc._schedule_rpc_coro(handling, state, self._loop, name), name="rpc_task"
            )
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def close(self) -> None:
        """Stops reading the surplus (calls in flight go on; the server's stop ends the
        takers)."""
        self._loop.remove_reader(self._wakeups.fileno())
        self._wakeups.close()


def keep_up(server: Any, registered: dict[str, Any], depth: int = DEPTH) -> KeptUp | None:
    """A started grpc.aio `server`, on the running loop, kept up with a busy loop (above);
    None, logged, where grpcio's internals are not as this module knows them."""
    started = time.perf_counter()
    try:
        kept = KeptUp(server, registered, depth)
    except (AttributeError, ImportError, LookupError, OSError, TypeError) as exc:
        logger.warning("gRPC calls will wait on a busy event loop (grpcio differs: %r)", exc)
        return None
    logger.info(
        "gRPC kept up with the event loop (%d methods, %d calls ahead; %.0f ms)",
        len(registered),
        depth,
        (time.perf_counter() - started) * 1000,
    )
    return kept
