"""A direct transport from a router to a dedicated version's replicas, beside Ray Serve's handle.

A Ray Serve handle call costs 1–2.5 ms here (../shared/DESIGN.md, "Measured"); one round trip on
a persistent TCP connection with a length-prefixed frame costs ~0.1 ms. So each ModelVersion
replica also listens on an ephemeral port and publishes `host:port` in a Directory (Ray's internal
KV in a gateway); each router keeps connections to the endpoints it finds there and sends batches
over them. Any
transport failure (a replica stopping in a rollout, killed, unreachable) makes the router send
that batch through the handle instead, so Ray Serve's handle stays the path of record for
rollouts, failures and retries, and a prediction being a pure function, sending it again is safe.

Frame: u32 length of a JSON header, the header, then the raw tensor bytes in header order.
Header: {"tensors": [[name, dtype, shape], ...]} or {"error": message, "code": code}; a router's
batch adds "remaining_s" (its time left) and "demand": [router id, requests it holds for the
version, requests it has shed for it so far], which the replica keeps for Ray Serve's
autoscaler (DemandBook): the queues are in the routers, where no replica would see them.
Numeric tensors only: a batch with strings (object arrays) goes through the handle.

Only the application's routers are answered. A replica listens on its node's address (not every
interface) and computes nothing for a peer until it has proven it holds the application's
secret (32 random bytes kept in the Directory, which only the cluster's members reach):

    replica → router   HELLO, nonce_r (32 random bytes)
    router  → replica  nonce_c, HMAC-SHA256(secret, "router" | nonce_r | nonce_c)
    replica → router   HMAC-SHA256(secret, "replica" | nonce_r | nonce_c)

The secret never travels; a recorded handshake replayed fails against a fresh nonce_r; the
router learns the replica is genuine too. A peer that fails, or takes longer than HANDSHAKE_S,
is dropped and counted (`modelgate_direct_refused_total`), and a router whose proof fails
sends its batch through the handle. Past the handshake, a frame is read only if it is what a
batch of this version can be (FrameLimits: its signature's inputs, at most a batch's rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import random
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import orjson

from serve.core.errors import ErrorCode, InferenceError
from serve.core.runners import expired, time_left
from serve.core.types import Feeds

logger = logging.getLogger("modelgate.direct")

_LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 31
#: Longest frame header a replica reads (a batch's header is ~100 bytes a tensor).
MAX_HEADER = 64 << 10
HELLO = b"MGD1"
NONCE = 32
#: Seconds a peer has to prove itself after connecting.
HANDSHAKE_S = 2.0
#: Tensors a frame for a model the replica does not serve may hold (read, then refused).
MAX_UNKNOWN_TENSORS = 64


#: This process's name in the demand it reports (a router replica's).
ROUTER_ID = secrets.token_hex(6)
#: Seconds a router's demand report counts after its last frame: a router with requests to send
#: sends frames, so an older report means it holds none.
DEMAND_FRESH_S = 5.0


@dataclass(frozen=True)
class Demand:
    """What one router holds for a version: requests queued or in a batch, and those it has
    shed (refused for a full queue) since it started."""

    router: str
    requests: int
    shed: int


class DemandBook:
    """The latest demand each router reported in its frames, for `record_autoscaling_stats`."""

    def __init__(self, fresh_s: float = DEMAND_FRESH_S) -> None:
        self.fresh_s = fresh_s
        self._latest: dict[str, tuple[float, Demand]] = {}

    def note(self, demand: Demand, now: float) -> None:
        self._latest[demand.router] = (now, demand)
        if len(self._latest) > 256:  # routers come and go; nothing may read the book for long
            self._forget_quiet(now)

    def stats(self, now: float) -> dict[str, float]:
        """`demand:<router>` and `shed:<router>` for each router heard from lately."""
        self._forget_quiet(now)
        out: dict[str, float] = {}
        for router, (_, demand) in self._latest.items():
            out[f"demand:{router}"] = float(demand.requests)
            out[f"shed:{router}"] = float(demand.shed)
        return out

    def _forget_quiet(self, now: float) -> None:
        for router, (seen, _) in list(self._latest.items()):
            if now - seen > self.fresh_s:
                del self._latest[router]


def kv_prefix(app: str, deployment: str) -> str:
    return f"direct/{app}/{deployment}/"


class Directory(Protocol):
    """Where replicas publish their endpoints and routers find them, shared by every node of the
    cluster (Ray's KV in a gateway: serve/ray/internals.py; a dict in the frame tests)."""

    def shared_secret(self, name: str) -> bytes:
        """One random secret per name, made by whichever caller asks first: every caller, on
        every node, gets the same bytes."""
        ...

    def publish(self, key: str, address: str) -> None: ...

    def listing(self, prefix: str) -> dict[str, str]:
        """key -> address, for every key under `prefix`."""
        ...

    def remove(self, key: str) -> None: ...


def _mac(secret: bytes, role: bytes, nonce_r: bytes, nonce_c: bytes) -> bytes:
    return hmac.new(secret, role + nonce_r + nonce_c, hashlib.sha256).digest()


async def prove(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """The router's side of the handshake; raises ConnectionError unless the replica proves
    it holds the secret too."""
    hello = await reader.readexactly(len(HELLO) + NONCE)
    if not hello.startswith(HELLO):
        raise ConnectionError("not a modelgate direct endpoint")
    nonce_r, nonce_c = hello[len(HELLO) :], secrets.token_bytes(NONCE)
    writer.write(nonce_c + _mac(secret, b"router", nonce_r, nonce_c))
    answer = await reader.readexactly(32)
    if not hmac.compare_digest(answer, _mac(secret, b"replica", nonce_r, nonce_c)):
        raise ConnectionError("the replica did not prove it belongs to the application")


async def challenge(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> bool:
    """The replica's side: whether the peer proved it holds the secret (then answered)."""
    nonce_r = secrets.token_bytes(NONCE)
    writer.write(HELLO + nonce_r)
    proof = await reader.readexactly(NONCE + 32)
    nonce_c, mac = proof[:NONCE], proof[NONCE:]
    if not hmac.compare_digest(mac, _mac(secret, b"router", nonce_r, nonce_c)):
        return False
    writer.write(_mac(secret, b"replica", nonce_r, nonce_c))
    return True


class FrameError(ConnectionError):
    """A frame beyond what a batch of this version can be: the connection is dropped."""


@dataclass(frozen=True)
class FrameLimits:
    """What a replica reads: exactly its signature's (numeric) inputs, each with at most a
    batch's worth of elements. A router's batch holds up to `max_batch_rows` rows, or one
    request of more, and a request's tensor holds at most `max_elements` elements."""

    #: name -> dtype, shape (-1: any); None: a model this replica does not serve (a router's
    #: catalog behind its peer's): any numeric tensors, each within `max_elements`, read so that
    #: the answer (UNAVAILABLE) keeps the connection in step.
    inputs: dict[str, tuple[np.dtype, tuple[int, ...]]] | None
    max_batch_rows: int
    max_elements: int

    def check(self, specs: list[tuple[str, np.dtype, list[int], int]]) -> None:
        if self.inputs is None:
            if len(specs) > MAX_UNKNOWN_TENSORS or any(
                kind.kind not in "biuf" or count > self.max_elements for _, kind, _, count in specs
            ):
                raise FrameError("frame for a model not served here is more than a batch")
            return
        if sorted(name for name, *_ in specs) != sorted(self.inputs):
            raise FrameError(f"frame tensors {[n for n, *_ in specs][:8]} are not the inputs")
        for name, kind, shape, count in specs:
            dtype, expected = self.inputs[name]
            fits = (
                kind == dtype
                and len(shape) == len(expected)
                and all(
                    type(got) is int and want in (-1, got) and got >= 0
                    for want, got in zip(expected, shape, strict=True)
                )
            )
            if not fits:
                raise FrameError(f"frame tensor '{name}' is {kind} {shape}, not {expected}")
            row = math.prod(shape[1:])
            if row > self.max_elements or count > max(self.max_elements, self.max_batch_rows * row):
                raise FrameError(f"frame tensor '{name}' {shape} is more than a batch")


def encodable(feeds: Feeds) -> bool:
    return all(v.dtype.kind in "biuf" for v in feeds.values())


def encode(
    feeds: Feeds,
    remaining_s: float | None = None,
    demand: Demand | None = None,
    model: str | None = None,
) -> list[bytes]:
    """A frame; `remaining_s`: the batch's time left (a replica refuses one with none left);
    `demand`: what the sending router holds for the version; `model`: the catalog model a
    router sends to the router replica that holds it (PeerPool)."""
    arrays = [(n, np.ascontiguousarray(v)) for n, v in feeds.items()]
    doc: dict[str, object] = {"tensors": [[n, a.dtype.str, list(a.shape)] for n, a in arrays]}
    if remaining_s is not None:
        doc["remaining_s"] = remaining_s
    if demand is not None:
        doc["demand"] = [demand.router, demand.requests, demand.shed]
    if model is not None:
        doc["model"] = model
    head = orjson.dumps(doc)
    return [_LENGTH.pack(len(head)), head, *(a.tobytes() for _, a in arrays)]


def encode_error(exc: InferenceError) -> list[bytes]:
    doc: dict[str, object] = {"error": exc.message, "code": exc.code.value}
    if exc.retry_after_s is not None:
        doc["retry_after_s"] = exc.retry_after_s
    head = orjson.dumps(doc)
    return [_LENGTH.pack(len(head)), head]


class Frame(NamedTuple):
    feeds: Feeds
    remaining_s: float | None  # the time its batch had left when sent
    demand: Demand | None  # what its router reported
    model: str | None = None  # a catalog model's key (router to router)


#: What a replica reads: one set of limits, or (a router serving catalog models to its peers)
#: those of the model a frame names (FrameLimits with no inputs for one it does not serve).
Limits = FrameLimits | Callable[[str | None], FrameLimits]


async def read(reader: asyncio.StreamReader, limits: Limits | None = None) -> Feeds:
    return (await read_frame(reader, limits)).feeds


async def read_frame(reader: asyncio.StreamReader, limits: Limits | None = None) -> Frame:
    """One frame: three reads (length, header, every tensor's bytes at once). With `limits`
    (a replica reading a router's batch), a frame beyond them is refused before its tensors
    are read."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > (MAX_FRAME if limits is None else MAX_HEADER):
        raise FrameError(f"frame header of {length} bytes")
    head = orjson.loads(await reader.readexactly(length))
    if "error" in head:
        retry = head.get("retry_after_s")
        retry_s = float(retry) if isinstance(retry, int | float) else None
        raise InferenceError(ErrorCode(head["code"]), head["error"], retry_after_s=retry_s)
    specs = [
        (name, np.dtype(dtype), shape, math.prod(shape)) for name, dtype, shape in head["tensors"]
    ]
    model = head.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 512):
        raise FrameError(f"frame model {str(model)[:100]!r}")
    if callable(limits):
        limits = limits(model)
    if limits is not None:
        limits.check(specs)
    total = sum(count * kind.itemsize for _, kind, _, count in specs)
    if total > MAX_FRAME:
        raise ConnectionError(f"frame of {total} tensor bytes")
    data = await reader.readexactly(total) if total else b""
    feeds: Feeds = {}
    offset = 0
    for name, kind, shape, count in specs:
        feeds[name] = np.frombuffer(data, kind, count, offset).reshape(shape)
        offset += count * kind.itemsize
    remaining = head.get("remaining_s")
    reported = head.get("demand")
    demand = None
    if reported is not None:
        try:
            router, requests, shed = reported
            demand = Demand(str(router)[:64], int(requests), int(shed))
        except (TypeError, ValueError) as exc:
            raise FrameError(f"frame demand {str(reported)[:100]!r}: {exc}") from None
    return Frame(feeds, None if remaining is None else float(remaining), demand, model)


class DirectServer:
    """The replica side: answers the frames of peers that prove they are the application's
    routers with `run`, and publishes its address under `key`. `on_refused(reason)` counts a
    peer dropped: "proof" (a wrong or replayed one), "timeout" (none within HANDSHAKE_S) or
    "frame" (a frame beyond `limits`)."""

    def __init__(
        self,
        run: Callable[[Feeds], Feeds],
        directory: Directory,
        key: str,
        secret: bytes,
        limits: Limits,
        on_refused: Callable[[str], None] = lambda reason: None,
        run_model: Callable[[str, Feeds, float | None], Awaitable[Feeds]] | None = None,
    ) -> None:
        self._run = run
        self._run_model = run_model  # a frame naming a model (catalog, router to router)
        self._directory = directory
        self.key = key
        self._secret = secret
        self._limits = limits
        self._on_refused = on_refused
        self.address = ""
        self._server: asyncio.Server | None = None
        self._republish: asyncio.Task[None] | None = None
        self.demand = DemandBook()
        self._connections: set[asyncio.StreamWriter] = set()
        self._idle: set[asyncio.StreamWriter] = set()  # waiting for their next frame
        self._draining = False

    async def start(self, host: str) -> str:
        """Listen on `host`, the node's own address (not every interface), and publish it."""
        await self.listen(host)
        self._publish()
        self._republish = asyncio.create_task(self._keep_published())
        return self.address

    async def listen(self, host: str) -> str:
        self._server = await asyncio.start_server(self._serve, host=host, port=0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{port}"
        return self.address

    def _publish(self) -> None:
        self._directory.publish(self.key, self.address)

    async def _keep_published(self) -> None:
        """A router that could not reach this replica removes its key: put it back."""
        while True:
            await asyncio.sleep(REPUBLISH_S)
            with contextlib.suppress(Exception):
                self._publish()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _no_delay(writer)
        self._connections.add(writer)
        try:
            if not await self._admit(reader, writer):
                return
            while not self._draining:
                self._idle.add(writer)
                try:
                    feeds, remaining_s, demand, model = await read_frame(reader, self._limits)
                except asyncio.IncompleteReadError:
                    return  # the router closed the connection (or a drain did)
                finally:
                    self._idle.discard(writer)
                if demand is not None:
                    self.demand.note(demand, time.monotonic())
                try:
                    if remaining_s is not None and remaining_s <= 0:
                        raise expired(self.key)
                    if model is not None and self._run_model is not None:
                        ends = None if remaining_s is None else time.monotonic() + remaining_s
                        chunks = encode(await self._run_model(model, feeds, ends))
                    else:
                        chunks = encode(self._run(feeds))
                except InferenceError as exc:
                    chunks = encode_error(exc)
                writer.writelines(chunks)
                await writer.drain()
        except FrameError as exc:
            self._on_refused("frame")
            logger.warning("direct connection dropped: %s", exc)
        except (ConnectionError, OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("direct connection dropped: %s", exc)
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            async with asyncio.timeout(HANDSHAKE_S):
                if await challenge(reader, writer, self._secret):
                    return True
                reason = "proof"
        except TimeoutError:
            reason = "timeout"
        except asyncio.IncompleteReadError:
            reason = "proof"
        peer = writer.get_extra_info("peername")
        logger.warning("direct port: refused %s (%s)", peer, reason)
        self._on_refused(reason)
        return False

    def close(self) -> None:
        if self._republish is not None:
            self._republish.cancel()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(Exception):
            self._directory.remove(self.key)

    async def drain(self, notice_s: float, timeout_s: float = 30.0) -> None:
        """Go without failing a batch, in this order: stop being listed and take no new
        connection (routers stop choosing this replica at their next refresh, within
        `notice_s`); then close each connection as soon as no frame is in flight on it; return
        when none is left (or after `timeout_s`). A router whose frame meets a closed connection
        sends it through the handle, as for any transport failure."""
        self.close()
        await asyncio.sleep(notice_s)
        self._draining = True
        for writer in list(self._idle):
            writer.close()
        try:
            async with asyncio.timeout(timeout_s):
                while self._connections:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            logger.warning(
                "%s: %d connections still busy after the drain", self.key, len(self._connections)
            )


@dataclass
class _Endpoint:
    address: str
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    in_flight: int = 0


class DirectPool:
    """The router side, for one deployment: connections to its replicas' endpoints.

    `refresh()` takes the addresses listed in the directory (from the health thread: an atomic
    swap); the event loop reconciles on the next call. `run()` returns None when no endpoint
    could take the batch: the caller sends it through the handle.
    """

    def __init__(self, name: str, directory: Directory, prefix: str, secret: bytes) -> None:
        self.name = name
        self._directory = directory
        self.prefix = prefix
        self._secret = secret
        self._listed: frozenset[str] = frozenset()
        self._reconciled: frozenset[str] | None = None  # the listing _endpoints matches
        self._unreachable: set[str] = set()
        self._endpoints: dict[str, _Endpoint] = {}
        #: What this router holds for the version, (requests, shed so far), sent in each frame
        self.report: Callable[[], tuple[int, int]] | None = None

    def refresh(self) -> None:
        """Read the published addresses (blocking: call it from a thread)."""
        unreachable, self._unreachable = self._unreachable, set()
        addresses = set()
        for key, address in self._directory.listing(self.prefix).items():
            if address in unreachable:  # the replica puts it back if it is alive
                self._directory.remove(key)
            else:
                addresses.add(address)
        self._listed = frozenset(addresses)

    def live(self) -> int:
        """The replicas listed as reachable now (0 while none is: the handle takes batches)."""
        return len(self._listed)

    @property
    def listed(self) -> frozenset[str]:
        """The addresses listed as reachable now."""
        return self._listed

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

    async def run(self, feeds: Feeds, deadline: float | None = None) -> Feeds | None:
        """The batch on one of the replicas (the least busy), with the time it has left; None
        when none can take it (no endpoint, a string tensor, a connection that failed)."""
        if not encodable(feeds):
            return None
        self._reconcile()
        if not self._endpoints:
            return None
        remaining_s = time_left(self.name, deadline)
        least = min(e.in_flight for e in self._endpoints.values())
        endpoint = random.choice([e for e in self._endpoints.values() if e.in_flight == least])
        endpoint.in_flight += 1
        try:
            return await self._send(endpoint, feeds, remaining_s)
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

    async def _send(
        self,
        endpoint: _Endpoint,
        feeds: Feeds,
        remaining_s: float | None,
        model: str | None = None,
    ) -> Feeds:
        if endpoint.idle:
            reader, writer = endpoint.idle.pop()
        else:
            host, port = endpoint.address.rsplit(":", 1)
            reader, writer = await asyncio.wait_for(self._connect(host, int(port)), HANDSHAKE_S)
        demand = None
        if self.report is not None:
            demand = Demand(ROUTER_ID, *self.report())
        try:
            writer.writelines(encode(feeds, remaining_s, demand, model))
            outputs = await read(reader)
        except InferenceError:
            endpoint.idle.append((reader, writer))  # an answer: the connection is sound
            raise
        except BaseException:
            writer.close()
            raise
        endpoint.idle.append((reader, writer))
        return outputs

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        _no_delay(writer)
        try:
            await prove(reader, writer, self._secret)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    def _forget(self, endpoint: _Endpoint) -> None:
        """Drop the endpoint until it is published again (refresh() deletes its key)."""
        self._endpoints.pop(endpoint.address, None)
        for _, writer in endpoint.idle:
            writer.close()
        self._listed = self._listed - {endpoint.address}
        self._unreachable.add(endpoint.address)


class PeerPool(DirectPool):
    """Router to router, for catalog models (serve/core/resident.py): each model is placed on
    one router replica, the one its key ranks first by rendezvous hashing over the replicas
    listed, so N replicas hold about N budgets of models rather than each holding the same
    ones. `run` sends a batch to its model's replica, or returns None when that is this one
    (`own`), when none is listed, or when the connection fails (the batch then runs here: a
    prediction is a pure function of its inputs). A replica joining or leaving moves only the
    models it ranks first."""

    own = ""  # this replica's own address, once it listens

    def owner(self, key: str) -> str | None:
        listed = self._listed
        if not listed:
            return None
        return max(listed, key=lambda address: _rank(key, address))

    def placed(self, keys: Iterable[str], before: Iterable[str]) -> set[str]:
        """Of `keys`, those placed on this replica. While the listing lacks this replica (a
        router that could not reach it removed its address, until it puts it back:
        REPUBLISH_S), the ones of `before` instead (what it held): a listing without it says
        nothing about what it should hold, and following it would drop its models while the
        others take them, for a while held by none."""
        keys = set(keys)
        if self._listed and self.own not in self._listed:
            return keys & set(before)
        return {k for k in keys if self.owner(k) in (None, self.own)}

    async def run_model(self, key: str, feeds: Feeds, deadline: float | None) -> Feeds | None:
        owner = self.owner(key)
        if owner is None or owner == self.own or not encodable(feeds):
            return None
        self._reconcile()
        endpoint = self._endpoints.get(owner)
        if endpoint is None:
            return None
        remaining_s = time_left(self.name, deadline)
        endpoint.in_flight += 1
        try:
            return await self._send(endpoint, feeds, remaining_s, key)
        except InferenceError as exc:
            if exc.code is ErrorCode.UNAVAILABLE:  # not (yet) in its catalog, or its load failed
                return None
            raise
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.warning("%s: peer %s unreachable (%r); run here", self.name, owner, exc)
            self._forget(endpoint)
            return None
        finally:
            endpoint.in_flight -= 1


def _rank(key: str, address: str) -> bytes:
    return hashlib.blake2b(f"{key}|{address}".encode(), digest_size=8).digest()


#: How often a replica puts its address back in the directory (a router that could not reach
#: it removed it): the longest a live replica can be missing from a listing, give or take a
#: read.
REPUBLISH_S = 10.0

#: A peer whose node is gone is found out within about this many seconds, whether a frame is
#: unacknowledged (TCP_USER_TIMEOUT) or an answer is awaited on a quiet connection (keepalive
#: probes, which a live peer's kernel answers however long its batch computes).
PEER_LOST_S = 3


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay; and a lost peer noticed in PEER_LOST_S, not after TCP's minutes: the
    router then sends the batch through the handle."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PEER_LOST_S - 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PEER_LOST_S * 1000)
