"""serve/ingress/grpc_aio.py: a grpc.aio server kept up with a busy event loop (issue 16, gRPC
beside HTTP), with real grpc.aio servers and clients on loopback."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

import grpc
import pytest

from serve.ingress.grpc_aio import Registering, keep_up

SERVICE = "modelgate.test.Echo"
#: How long the busy loop's every pass lasts (a router loaded with HTTP: tens of ms).
PASS_S = 0.05
CALLERS = 100


def _echo_handlers(handler: Any) -> dict[str, Any]:
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=lambda b: b, response_serializer=lambda b: b
        )
    }


async def _started(handler: Any, kept_up: bool) -> tuple[Any, int, Any]:
    server = grpc.aio.server()
    registering = Registering(server)
    registering.add_registered_method_handlers(SERVICE, _echo_handlers(handler))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, keep_up(server, registering.registered) if kept_up else None


def _busy_server(kept_up: bool, ports: Any, results: Any, stop: Any) -> None:
    """A server whose loop passes once every PASS_S (a callback holds each pass), counting
    passes and calls until `stop`."""

    async def main() -> None:
        calls = 0

        async def echo(request: bytes, context: Any) -> bytes:
            nonlocal calls
            calls += 1
            return request

        server, port, _ = await _started(echo, kept_up)
        loop = asyncio.get_running_loop()
        passes = 0

        def hold() -> None:
            nonlocal passes
            passes += 1
            time.sleep(PASS_S)
            loop.call_soon(hold)

        loop.call_soon(hold)
        ports.put(port)
        while not stop.is_set():
            await asyncio.sleep(0)
        results.put((passes, calls))
        await server.stop(None)

    asyncio.run(main())


def _calls_a_pass(kept_up: bool) -> float:
    context = multiprocessing.get_context("spawn")
    ports, results, stop = context.Queue(), context.Queue(), context.Event()
    server = context.Process(target=_busy_server, args=(kept_up, ports, results, stop))
    server.start()
    try:
        port = ports.get(timeout=60)

        async def callers() -> None:
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]
            echoes = [c.unary_unary(f"/{SERVICE}/Echo") for c in channels]

            async def caller(index: int) -> None:
                while True:
                    await echoes[index % len(echoes)](b"x", timeout=60)

            tasks = [asyncio.ensure_future(caller(i)) for i in range(CALLERS)]
            await asyncio.sleep(4.0)
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()

        asyncio.run(callers())
        passes, calls = results.get(timeout=60)
    finally:
        stop.set()
        server.join(timeout=30)
        if server.is_alive():
            server.kill()
            server.join()
    assert passes > 20, f"the loop passed {passes} times"
    return calls / passes


def test_a_busy_loop_takes_every_call_that_came_at_each_pass_not_one_a_pass() -> None:
    """The cause issue 16 found: grpc.aio moves calls along at about one every two passes of
    its loop, whatever the number of callers. Kept up, a pass takes many of the callers'
    calls (the control shows the same loop without it)."""
    kept = _calls_a_pass(kept_up=True)
    as_grpc_made_it = _calls_a_pass(kept_up=False)
    print(f"calls a pass: {kept:.2f} kept up, {as_grpc_made_it:.2f} as grpc.aio made it")
    assert as_grpc_made_it < 1.0, f"{as_grpc_made_it:.2f} calls a pass without keep_up"
    assert kept >= 5.0, f"{kept:.2f} calls a pass kept up ({as_grpc_made_it:.2f} without)"


def test_calls_taken_ahead_keep_grpc_aio_s_own_handling() -> None:
    """Errors, deadlines and cancellation behave as grpc.aio's own loop handles them, and a
    stopped server leaves no taker behind."""
    asyncio.run(_own_handling())


async def _own_handling() -> None:
    cancelled = asyncio.Event()

    async def echo(request: bytes, context: Any) -> bytes:
        if request == b"bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: named")
        if request == b"slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return request[::-1]

    server, port, kept = await _started(echo, kept_up=True)
    assert kept is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/Echo")
        answers = await asyncio.gather(*(call(f"r{i}".encode()) for i in range(200)))
        assert answers == [f"r{i}".encode()[::-1] for i in range(200)]
        assert kept.taken > 100, f"{kept.taken} of 200 calls taken ahead"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await call(b"bad")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.details() == "bad input: named"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await call(b"slow", timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), 10)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary(f"/{SERVICE}/Nope")(b"x")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await server.stop(None)
    kept.close()
    await asyncio.sleep(0)
    assert all(taker.done() for taker in kept._takers)
