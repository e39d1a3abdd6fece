"""The lean listener (serve/ingress/lean.py) on a real socket, with a real HTTP client, and the
HAProxy configuration that points at it (serve/ingress/haproxy.py)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve.ingress import haproxy, lean
from serve.ingress.lean import LeanListener
from tests.conftest import free_port
from tests.serve.test_haproxy import _ray_config


class Handler:
    """Answers each request with what it saw; waits `hold` first when the path says so."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.hold = asyncio.Event()
        self.cancelled: list[str] = []

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        if request.url.path.endswith("/hold"):
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled.append(request.scope["path"])
                raise
        self.seen.append({"path": request.scope["path"], "root": request.scope["root_path"]})
        return JSONResponse({"path": request.scope["path"], "bytes": len(body)})


Scenario = Callable[[LeanListener, Handler], Awaitable[None]]


def run(scenario: Scenario) -> None:
    """`scenario` against a listener on a free port, on an event loop of its own (as in a
    replica); the listener drained after it, whatever happens."""

    async def main() -> None:
        handler = Handler()
        server = LeanListener(handler, "127.0.0.1", free_port())
        server.start()
        try:
            await scenario(server, handler)
        finally:
            handler.hold.set()
            await server.drain()

    asyncio.run(main())


def base(server: LeanListener) -> str:
    return f"http://{server.host}:{server.port}"


def test_a_request_whose_client_leaves_is_cancelled_and_the_others_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run(_client_leaves)
    assert "Exception in ASGI application" not in caplog.text  # a cancel, not an error


async def _client_leaves(server: LeanListener, handler: Handler) -> None:
    _, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"POST /v2/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    while not server_holds(handler):  # the handler has the request, and waits
        await asyncio.sleep(0.01)
    writer.close()  # the client gives up
    for _ in range(500):
        if handler.cancelled:
            break
        await asyncio.sleep(0.01)
    assert handler.cancelled == ["/v2/hold"]
    async with (  # the listener serves on
        aiohttp.ClientSession() as session,
        session.post(base(server) + "/v2/other", data=b"x") as response,
    ):
        assert response.status == 200


def server_holds(handler: Handler) -> bool:
    """Whether a request is waiting on `handler.hold`."""
    return bool(getattr(handler.hold, "_waiters", None))


def test_it_answers_health_checks_and_hands_requests_below_the_route_prefix() -> None:
    run(_answers)


async def _answers(server: LeanListener, handler: Handler) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(base(server) + lean.HEALTH_PATH) as response:
            assert response.status == 200 and await response.text() == "success"
        headers = {lean.ROOT_HEADER: "/lean"}
        url = base(server) + "/lean/v2/models/m/infer"
        async with session.post(url, data=b"x" * 10, headers=headers) as response:
            assert response.status == 200
            assert await response.json() == {"path": "/lean/v2/models/m/infer", "bytes": 10}
        async with session.get(base(server) + "/v2", headers={lean.ROOT_HEADER: "/"}) as response:
            assert response.status == 200
    # the prefix reaches the router as Ray Serve gives it: in root_path ("/" is none)
    assert handler.seen == [
        {"path": "/lean/v2/models/m/infer", "root": "/lean"},
        {"path": "/v2", "root": ""},
    ]


def test_a_slow_header_client_gets_408_at_the_head_deadline_and_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lean, "HEAD_TIMEOUT_S", 0.5)
    run(_slow_head)


async def _slow_head(server: LeanListener, _: Handler) -> None:
    loop = asyncio.get_running_loop()

    def slow_head() -> tuple[bytes, float]:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"POST /v2 HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            return answer, time.monotonic() - started

    def silent() -> bytes:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            return answer

    (answer, _), quiet = await asyncio.gather(
        loop.run_in_executor(None, slow_head), loop.run_in_executor(None, silent)
    )
    assert answer.startswith(b"HTTP/1.1 408 ") and b"request head not received" in answer
    assert quiet.startswith(b"HTTP/1.1 408 ")  # a connection that never says anything, too
    # and a normal request still is answered
    async with (
        aiohttp.ClientSession() as session,
        session.get(base(server) + lean.HEALTH_PATH) as response,
    ):
        assert response.status == 200


def test_draining_refuses_new_connections_and_answers_what_it_holds() -> None:
    run(_drains)


async def _drains(server: LeanListener, handler: Handler) -> None:
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(session.post(base(server) + "/v2/hold", data=b"{}"))
        while not server._server or not server._server.server_state.tasks:
            await asyncio.sleep(0.01)
        draining = asyncio.create_task(server.drain())
        await asyncio.sleep(0.2)
        assert server.draining and not draining.done()  # it waits for the held request
        # meanwhile nothing new is taken: a health check (a new connection) fails, and
        # HAProxy sends the next requests to another router replica
        with pytest.raises(OSError):
            socket.create_connection((server.host, server.port), timeout=2).close()
        handler.hold.set()
        response = await held
        assert response.status == 200  # answered, not cut
        await draining


def test_a_taken_port_fails_the_start() -> None:
    async def start_another(server: LeanListener, _: Handler) -> None:
        with pytest.raises(OSError):
            LeanListener(Handler(), server.host, server.port).start()

    run(start_another)


def test_the_port_follows_the_replica_id_alone_within_its_range() -> None:
    ports = {lean.lean_port(f"r{i:07d}") for i in range(2000)}
    assert ports <= set(lean.PORTS) and len(ports) > 1500  # spread over the range
    assert lean.lean_port("ijmllfl9") == lean.lean_port("ijmllfl9")


def test_the_ingress_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lean.INGRESS_ENV, raising=False)
    assert lean.ingress() == "lean"  # the default
    monkeypatch.setenv(lean.INGRESS_ENV, "ray")
    assert lean.ingress() == "ray"
    monkeypatch.setenv(lean.INGRESS_ENV, "fast")
    with pytest.raises(lean.IngressError, match="MODELGATE_INGRESS='fast': expected one of"):
        lean.ingress()


def test_haproxy_points_each_router_at_its_lean_ports_and_tells_it_the_prefix(
    tmp_path: Path,
) -> None:
    ray_config = _ray_config(tmp_path)
    config = haproxy.harden(ray_config, tmp_path, lean=True)
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run(
        [haproxy.real_binary(), "-c", "-f", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    http = re.findall(r"(?m)^    server SERVE_REPLICA_\S+-Router-(\w+) [\d.]+:(\d+) check", config)
    assert http and all(int(port) == lean.lean_port(rid) for rid, port in http)
    grpc = re.findall(
        r"(?m)^    server SERVE_REPLICA_\S+-Router-(\w+) [\d.]+:(\d+) proto h2", config
    )
    assert grpc and all(int(port) == lean.lean_port(rid, "grpc") for rid, port in grpc)
    assert lean.lean_port("ijmllfl9", "grpc") != lean.lean_port("ijmllfl9")
    # Ray's fallback proxy stays where it is, for HTTP and gRPC
    assert " 127.0.0.1:8500 check backup" in config and " 127.0.0.1:9500 proto h2 check" in config
    for backend in re.findall(r"(?m)^backend (http-\S+)$", config):
        section = config.split(f"backend {backend}\n", 1)[1]
        assert section.startswith(
            f"    http-request set-header {lean.ROOT_HEADER} %[var(txn.serve_route)]\n"
        )
    # without the setting, Ray's ports
    plain = haproxy.harden(ray_config, tmp_path)
    assert "127.0.0.1:30000 check" in plain and lean.ROOT_HEADER not in plain


def test_the_grpc_listener_answers_haproxys_health_check_and_caps_messages() -> None:
    """grpc.aio on the loop, the inference service registered by the caller, the health check
    HAProxy replays (Ray's Healthz), a message past the cap refused before it is read whole."""
    import grpc

    from serve.protos import grpc_predict_v2_pb2 as pb
    from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    class Live(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: object, context: object) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

    async def scenario() -> None:
        port = free_port()
        listener = lean.LeanGrpcListener(
            lambda server: pb_grpc.add_GRPCInferenceServiceServicer_to_server(Live(), server),
            "127.0.0.1",
            port,
            max_message_bytes=1 << 16,
        )
        listener.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert (await stub.ServerLive(pb.ServerLiveRequest())).live
                healthz = channel.unary_unary(
                    f"/{lean.HEALTHZ_SERVICE}/{lean.HEALTHZ_METHOD}",
                    request_serializer=lambda data: data,
                    response_deserializer=lambda data: data,
                )
                assert b"success" in await healthz(b"")
                big = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * (1 << 17)])
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ModelInfer(big)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                with pytest.raises(OSError):  # the port is taken
                    lean.LeanGrpcListener(lambda server: None, "127.0.0.1", port, 1024).start()
        finally:
            await listener.drain()
        assert listener.draining

    asyncio.run(scenario())
