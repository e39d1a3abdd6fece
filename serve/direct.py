"""A direct transport from a router to a dedicated version's replicas, beside Ray Serve's handle.

A Ray Serve handle call costs 1–2.5 ms here (../shared/DESIGN.md, "Measured"); one round trip on
a persistent TCP connection with a length-prefixed frame costs ~0.1 ms. So each ModelVersion
replica also listens on an ephemeral port and publishes `host:port` in Ray's internal KV; each
router keeps connections to the endpoints it finds there and sends batches over them. Any
transport failure (a replica stopping in a rollout, killed, unreachable) makes the router send
that batch through the handle instead, so Ray Serve's handle stays the path of record for
rollouts, failures and retries, and a prediction being a pure function, sending it again is safe.

Frame: u32 length of a JSON header, the header, then the raw tensor bytes in header order.
Header: {"tensors": [[name, dtype, shape], ...]} or {"error": message, "code": code}.
Numeric tensors only: a batch with strings (object arrays) goes through the handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from serve.errors import ErrorCode, InferenceError

logger = logging.getLogger("modelgate.direct")

Feeds = dict[str, np.ndarray]
NAMESPACE = "modelgate"
_LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 31


def kv_prefix(app: str, deployment: str) -> str:
    return f"direct/{app}/{deployment}/"


def encodable(feeds: Feeds) -> bool:
    return all(v.dtype.kind in "biuf" for v in feeds.values())


def encode(feeds: Feeds) -> list[bytes]:
    arrays = [(n, np.ascontiguousarray(v)) for n, v in feeds.items()]
    head = orjson.dumps({"tensors": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]})
    return [_LENGTH.pack(len(head)), head, *(a.tobytes() for _, a in arrays)]


def encode_error(exc: InferenceError) -> list[bytes]:
    head = orjson.dumps({"error": exc.message, "code": exc.code.value})
    return [_LENGTH.pack(len(head)), head]


async def read(reader: asyncio.StreamReader) -> Feeds:
    """One frame: three reads (length, header, every tensor's bytes at once)."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ConnectionError(f"frame header of {length} bytes")
    head = orjson.loads(await reader.readexactly(length))
    if "error" in head:
        raise InferenceError(ErrorCode(head["code"]), head["error"])
    specs = [
        (name, np.dtype(dtype), shape, math.prod(shape)) for name, dtype, shape in head["tensors"]
    ]
    total = sum(count * kind.itemsize for _, kind, _, count in specs)
    if total > MAX_FRAME:
        raise ConnectionError(f"frame of {total} tensor bytes")
    data = await reader.readexactly(total) if total else b""
    feeds: Feeds = {}
    offset = 0
    for name, kind, shape, count in specs:
        feeds[name] = np.frombuffer(data, kind, count, offset).reshape(shape)
        offset += count * kind.itemsize
    return feeds


class DirectServer:
    """The replica side: answers frames with `run`, and publishes its address under `key`."""

    def __init__(self, run: Callable[[Feeds], Feeds], key: str) -> None:
        self._run = run
        self.key = key
        self.address = ""
        self._server: asyncio.Server | None = None
        self._republish: asyncio.Task[None] | None = None

    async def start(self) -> str:
        import ray

        self._server = await asyncio.start_server(self._serve, host="0.0.0.0", port=0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{ray.util.get_node_ip_address()}:{port}"
        self._publish()
        self._republish = asyncio.create_task(self._keep_published())
        return self.address

    def _publish(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(self.key, self.address, overwrite=True, namespace=NAMESPACE)

    async def _keep_published(self) -> None:
        """A router that could not reach this replica removes its key: put it back."""
        while True:
            await asyncio.sleep(10)
            with contextlib.suppress(Exception):
                self._publish()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        try:
            while True:
                try:
                    feeds = await read(reader)
                except asyncio.IncompleteReadError:
                    return  # the router closed the connection
                try:
                    chunks = encode(self._run(feeds))
                except InferenceError as exc:
                    chunks = encode_error(exc)
                writer.writelines(chunks)
                await writer.drain()
        except (ConnectionError, OSError, ValueError, KeyError) as exc:
            logger.warning("direct connection dropped: %s", exc)
        finally:
            writer.close()

    def close(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        if self._republish is not None:
            self._republish.cancel()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(Exception):
            _internal_kv_del(self.key, namespace=NAMESPACE)


@dataclass
class _Endpoint:
    address: str
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    in_flight: int = 0


class DirectPool:
    """The router side, for one deployment: connections to its replicas' endpoints.

    `refresh()` takes the addresses listed in the KV (from the health thread: an atomic swap);
    the event loop reconciles on the next call. `run()` returns None when no endpoint could take
    the batch: the caller sends it through the handle.
    """

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix
        self._listed: frozenset[str] = frozenset()
        self._reconciled: frozenset[str] | None = None  # the listing _endpoints matches
        self._unreachable: set[str] = set()
        self._endpoints: dict[str, _Endpoint] = {}

    def refresh(self) -> None:
        """Read the published addresses (blocking: call it from a thread)."""
        from ray.experimental.internal_kv import (
            _internal_kv_del,
            _internal_kv_get,
            _internal_kv_list,
        )

        unreachable, self._unreachable = self._unreachable, set()
        addresses = set()
        for key in _internal_kv_list(self.prefix, namespace=NAMESPACE):
            value = _internal_kv_get(key, namespace=NAMESPACE)
            if not value:
                continue
            if value.decode() in unreachable:  # the replica puts it back if it is alive
                _internal_kv_del(key, namespace=NAMESPACE)
            else:
                addresses.add(value.decode())
        self._listed = frozenset(addresses)

    def _reconcile(self) -> None:
        listed = self._listed
        if listed is self._reconciled:  # nothing new since the last batch
            return
        self._reconciled = listed
        for address in list(self._endpoints):
            if address not in listed:
                for _, writer in self._endpoints.pop(address).idle:
                    writer.close()
        for address in listed:
            if address not in self._endpoints:
                self._endpoints[address] = _Endpoint(address)

    async def run(self, feeds: Feeds) -> Feeds | None:
        if not encodable(feeds):
            return None
        self._reconcile()
        if not self._endpoints:
            return None
        least = min(e.in_flight for e in self._endpoints.values())
        endpoint = random.choice([e for e in self._endpoints.values() if e.in_flight == least])
        endpoint.in_flight += 1
        try:
            return await self._send(endpoint, feeds)
        except InferenceError:
            raise
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.warning(
                "%s: %s unreachable (%r); using the handle", self.name, endpoint.address, exc
            )
            self._forget(endpoint)
            return None
        finally:
            endpoint.in_flight -= 1

    async def _send(self, endpoint: _Endpoint, feeds: Feeds) -> Feeds:
        if endpoint.idle:
            reader, writer = endpoint.idle.pop()
        else:
            host, port = endpoint.address.rsplit(":", 1)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
            _no_delay(writer)
        try:
            writer.writelines(encode(feeds))
            outputs = await read(reader)
        except InferenceError:
            endpoint.idle.append((reader, writer))  # an answer: the connection is sound
            raise
        except BaseException:
            writer.close()
            raise
        endpoint.idle.append((reader, writer))
        return outputs

    def _forget(self, endpoint: _Endpoint) -> None:
        """Drop the endpoint until it is published again (refresh() deletes its key)."""
        self._endpoints.pop(endpoint.address, None)
        for _, writer in endpoint.idle:
            writer.close()
        self._listed = self._listed - {endpoint.address}
        self._unreachable.add(endpoint.address)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
