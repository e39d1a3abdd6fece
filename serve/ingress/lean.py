"""The lean data path: a router replica's own HTTP listener, outside Ray Serve's per-request
wrapper (issue 21).

Through Ray Serve's ingress a request costs ~475 us of CPU, of which the gateway's own work is
20-40 us: the rest is Ray's per-request machinery around the user's ASGI call. So by default
(`MODELGATE_INGRESS` unset or `lean` in every node's environment; `ray` chooses Ray Serve's
ingress), each router replica serves HTTP (and gRPC: `LeanGrpcListener`) itself:

- it listens on `lean_port(replica id)`, a port derived from its replica id alone, on the host
  Ray binds its own direct-ingress port to (`http_options.host`), with uvicorn on httptools
  and the replica's own event loop (loadtests/lean.py chose it by measurement);
- the hardened HAProxy configuration (serve/ingress/haproxy.py, `harden`, on every node and
  every reload) points each router replica's server line at that port instead of Ray's, and
  tells the router its application's route prefix in a header it sets itself
  (`ROOT_HEADER`): Ray Serve keeps placement, health, rollouts and scaling; HAProxy balances;
  requests no longer pass through Ray's wrapper;
- the listener answers HAProxy's health check (`GET /-/healthz`: 503 once the replica drains),
  and every other request goes to the Router's own HTTP path (admission, limits, routing),
  exactly as through Ray's ingress;
- stopping, the router first stays reachable while Ray's deregistration window lasts (Ray
  holds the replica up that long), then stops accepting and answers what it holds
  (`drain`), so a rollout or a scale-down fails no request: HAProxy re-sends a refused
  connection to another router replica.

A port that is taken fails the replica's start; Ray Serve then starts another replica, with
another id and so another port. The ports lie in `PORTS`, below Linux's ephemeral range and
apart from Ray's own ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve.ingress.grpc_aio import KeptUp, Registering, keep_up

logger = logging.getLogger("modelgate.lean")

#: The node setting that chooses the ingress: "lean" (the routers' own listeners, the default)
#: or "ray" (Ray Serve's direct ingress). It must be the same on every node: HAProxy and the
#: routers each read it.
INGRESS_ENV = "MODELGATE_INGRESS"
INGRESSES = ("ray", "lean")
DEFAULT = "lean"
#: Router replicas' lean ports: below the kernel's ephemeral ports (32768-), above Ray's worker
#: ports (10002-19999 by default), apart from Ray's direct-ingress ranges (30000-31000 HTTP,
#: 40000-41000 gRPC).
PORTS = range(20000, 28000)
#: The header HAProxy sets to the application's route prefix on each request it sends a lean
#: listener (a client's own is replaced): the router's routes are below it.
ROOT_HEADER = "x-modelgate-root-path"
_ROOT = ROOT_HEADER.encode()
HEALTH_PATH = "/-/healthz"
#: Seconds a client has to send a request's head (headers), at HAProxy (serve/ingress/haproxy.py)
#: and at a lean listener: slow-header clients are answered 408 and dropped.
HEAD_TIMEOUT_S = 10
#: Seconds a connection may stay idle between requests (HAProxy reuses its connections).
KEEP_ALIVE_S = 60
#: Connections the kernel holds for the listener before it accepts them.
BACKLOG = 2048
#: Seconds the listener gives what it holds to finish once it stops accepting.
DRAIN_S = 30

Handler = Callable[[Request], Awaitable[Response]]


class IngressError(ValueError):
    pass


def ingress() -> str:
    """This node's ingress setting."""
    value = os.environ.get(INGRESS_ENV, DEFAULT).strip() or DEFAULT
    if value not in INGRESSES:
        raise IngressError(f"{INGRESS_ENV}={value!r}: expected one of {', '.join(INGRESSES)}")
    return value


def lean_port(replica_id: str, protocol: str = "http") -> int:
    """The port a router replica listens on for `protocol` (http, grpc), from its id alone:
    HAProxy's configuration on any node computes the same without asking anyone."""
    key = replica_id if protocol == "http" else f"{replica_id}/{protocol}"
    digest = hashlib.sha256(key.encode()).digest()
    return PORTS.start + int.from_bytes(digest[:4], "big") % len(PORTS)


class _HeadTimed(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's head (uvicorn has none):
    from the connection's start, and from each request's first byte, the head must be whole
    within HEAD_TIMEOUT_S, or the client gets 408 and the connection closes. (A body has its
    own deadline: the router's body reader, `limits.body_timeout_s`.)"""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Also: a request whose client went away before its answer is cancelled (as Ray
        Serve's ingress does), so that one still queued is never computed."""
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        task = getattr(cycle, "modelgate_task", None)
        if cycle is not None and not cycle.response_complete and task and not task.done():
            cycle.modelgate_left = True  # type: ignore[attr-defined]
            task.cancel()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        body = f'{{"error": "request head not received within {HEAD_TIMEOUT_S} s"}}'.encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn on a loop it is given, leaving the process's signals to Ray."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LeanListener:
    """One router replica's HTTP listener: `handler` answers each request (the Router's own
    HTTP path); this answers HAProxy's health check and drains."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler, self.host, self.port = handler, host, port
        self.draining = False
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Binds and listens now, or raises OSError (the port taken: the replica then fails to
        start); serves on the running event loop (connections wait in the backlog until its
        first turn)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        config = uvicorn.Config(
            self._asgi,
            http=_HeadTimed,
            interface="asgi3",
            proxy_headers=False,
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=DRAIN_S,
            server_header=False,
            date_header=False,
        )
        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        logger.info("lean listener on %s:%d", self.host, self.port)

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == HEALTH_PATH:
            status, body = (503, b"draining") if self.draining else (200, b"success")
            await Response(body, status, media_type="text/plain")(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == _ROOT:
                root = value.decode("latin-1").rstrip("/")
                scope = {**scope, "root_path": root}
                break
        cycle = getattr(receive, "__self__", None)  # uvicorn's request cycle (connection_lost)
        task = asyncio.current_task()
        if cycle is not None:
            cycle.modelgate_task = task
        try:
            response = await self.handler(Request(scope, receive))
            await response(scope, receive, send)
        except asyncio.CancelledError:
            if task is not None and getattr(cycle, "modelgate_left", False):
                task.uncancel()  # the client left (`_HeadTimed.connection_lost`): no one to answer
                return
            raise

    async def drain(self) -> None:
        """Health checks fail, new connections are refused (HAProxy sends them elsewhere),
        idle keep-alive connections close, and the requests in flight are answered (for up
        to DRAIN_S)."""
        self.draining = True
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), DRAIN_S + 5)

    def close(self) -> None:
        """Without a loop to wait on (the garbage collector's call): stop at once."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True


#: The unary call HAProxy's gRPC health check replays (Ray's template:
#: `/ray.serve.RayServeAPIService/Healthz`, an empty request), and the answer it looks for (the
#: bytes "success"): Ray's HealthzResponse{message: "success"}, encoded.
HEALTHZ_SERVICE, HEALTHZ_METHOD = "ray.serve.RayServeAPIService", "Healthz"
HEALTHY = b"\n\x07success"


class LeanGrpcListener:
    """One router replica's gRPC listener (grpc.aio on the replica's loop, kept up with it when
    HTTP loads it: serve/ingress/grpc_aio.py): the services `add_services` registers (the
    Router's InferenceServicer), HAProxy's health check, messages capped at `max_message_bytes`
    (RESOURCE_EXHAUSTED past it, before it is read whole)."""

    def __init__(
        self,
        add_services: Callable[[Any], None],
        host: str,
        port: int,
        max_message_bytes: int,
    ) -> None:
        self.add_services, self.host, self.port = add_services, host, port
        self.max_message_bytes = max_message_bytes
        self.draining = False
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._kept_up: KeptUp | None = None

    def start(self) -> None:
        """Binds now, or raises OSError (the port taken); serves from the loop's next turn."""
        import grpc

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        registering = Registering(server)
        self.add_services(registering)
        healthz = grpc.unary_unary_rpc_method_handler(
            self._healthz,
            request_deserializer=lambda data: data,
            response_serializer=lambda data: data,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(HEALTHZ_SERVICE, {HEALTHZ_METHOD: healthz}),)
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"the lean gRPC listener cannot bind {address}: {exc}") from exc
        if bound != self.port:
            raise OSError(f"the lean gRPC listener cannot bind {address}")
        self._server = server
        self._task = asyncio.get_running_loop().create_task(self._serve(registering.registered))
        logger.info("lean gRPC listener on %s", address)

    async def _serve(self, registered: dict[str, Any]) -> None:
        await self._server.start()
        self._kept_up = keep_up(self._server, registered)

    async def _healthz(self, request: bytes, context: Any) -> bytes:
        if self.draining:
            import grpc

            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return HEALTHY

    async def drain(self) -> None:
        """New calls refused, those in flight answered (for up to DRAIN_S)."""
        self.draining = True
        if self._server is None:
            return
        with contextlib.suppress(Exception):
            if self._task is not None:
                await self._task
            await self._server.stop(DRAIN_S)
        if self._kept_up is not None:
            self._kept_up.close()

    def close(self) -> None:
        """Without a loop to wait on: nothing to do but let the process end it."""
        self.draining = True
