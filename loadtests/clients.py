"""Async senders: one request out, its outcome back ("ok", "http_503", "grpc_UNAVAILABLE",
"timeout", "connection"). HTTP keeps connections alive (aiohttp); gRPC shares one channel."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from loadtests.payload import Payload
from serve.client.samples import infer_path, model_path

PROTOCOLS = ("http", "binary", "grpc")


@dataclass(frozen=True)
class Target:
    """Where the load goes: the gateway's HTTP URL (metadata always comes from there), its gRPC
    address, the protocol to send with, and the model and version (or alias) to ask for."""

    url: str
    model: str
    version: str | None = None
    protocol: str = "http"
    grpc: str = "127.0.0.1:9000"
    grpc_application: str | None = None  # Ray Serve's `application` metadata, if several apps


class Sender(Protocol):
    #: The first answer of each failed outcome ("http_503" -> its status line, Retry-After and
    #: body): what a test's failure message shows.
    answers: dict[str, str]

    async def __call__(self, payload: Payload) -> str: ...

    async def close(self) -> None: ...


#: Characters of a failed answer's body kept in `answers`.
ANSWER_CHARS = 300


class HttpSender:
    def __init__(self, target: Target, connections: int, timeout_s: float) -> None:
        import aiohttp

        self.binary = target.protocol == "binary"
        self.url = target.url.rstrip("/") + infer_path(target.model, target.version)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
        self.errors = (aiohttp.ClientError, OSError)
        self.answers: dict[str, str] = {}

    async def __call__(self, payload: Payload) -> str:
        if self.binary:
            body, headers = payload.binary, payload.binary_headers
        else:
            body, headers = payload.json, {"content-type": "application/json"}
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status == 200:
                    return "ok"
                outcome = f"http_{response.status}"
                if outcome not in self.answers:
                    retry = response.headers.get("retry-after")
                    self.answers[outcome] = (
                        f"{response.status} {response.reason} (retry-after: {retry}): "
                        + data[:ANSWER_CHARS].decode(errors="replace")
                    )
                return outcome
        except TimeoutError:
            return "timeout"
        except self.errors:
            return "connection"

    async def close(self) -> None:
        await self.session.close()


class GrpcSender:
    def __init__(self, target: Target, timeout_s: float) -> None:
        import grpc

        from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(target.grpc)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s
        app = target.grpc_application
        self.metadata = (("application", app),) if app else None
        self.answers: dict[str, str] = {}

    async def __call__(self, payload: Payload) -> str:
        try:
            await self.stub.ModelInfer(payload.grpc, timeout=self.timeout_s, metadata=self.metadata)
            return "ok"
        except self.grpc.aio.AioRpcError as exc:
            if exc.code() == self.grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout"
            outcome = f"grpc_{exc.code().name}"
            self.answers.setdefault(outcome, str(exc.details())[:ANSWER_CHARS])
            return outcome

    async def close(self) -> None:
        await self.channel.close()


def sender(target: Target, connections: int, timeout_s: float) -> Sender:
    if target.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {target.protocol}")
    if target.protocol == "grpc":
        return GrpcSender(target, timeout_s)
    return HttpSender(target, connections, timeout_s)


async def wait_ready(target: Target, timeout_s: float = 30.0) -> None:
    """Until the model answers ready over HTTP."""
    import aiohttp

    url = target.url.rstrip("/") + model_path(target.model, target.version)
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s}s")
            await asyncio.sleep(0.2)
