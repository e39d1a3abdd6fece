"""The direct transport's frames (serve/transport/direct.py), without sockets or Ray."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import numpy as np
import orjson
import pytest

from serve.core.errors import ErrorCode, InferenceError
from serve.transport.direct import (
    HELLO,
    MAX_FRAME,
    MAX_HEADER,
    ROUTER_ID,
    Demand,
    DemandBook,
    DirectPool,
    DirectServer,
    Frame,
    FrameLimits,
    encode,
    encode_error,
    prove,
    read,
    read_frame,
)


def _read(*frames: list[bytes]) -> list[dict[str, np.ndarray]]:
    """Every frame fed to one stream, read back in order."""

    async def main() -> list[dict[str, np.ndarray]]:
        reader = asyncio.StreamReader()
        for chunks in frames:
            reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        return [await read(reader) for _ in frames]

    return asyncio.run(main())


def test_frames_carry_every_numeric_dtype_and_shape_back_to_back() -> None:
    feeds = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "label": np.array([1, 2, 3], dtype=np.int64),
        "empty": np.zeros((0, 5), np.float64),
        "mask": np.array([[True, False], [False, True]]),
        "half": np.linspace(0, 1, 6, dtype=np.float16).reshape(2, 3),
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],  # not contiguous
    }

    for out in _read(encode(feeds), encode(feeds)):
        assert list(out) == list(feeds)
        for name, sent in feeds.items():
            assert out[name].dtype == sent.dtype and out[name].shape == sent.shape, name
            np.testing.assert_array_equal(out[name], sent)


def test_an_error_frame_raises_the_replica_error_and_a_huge_header_is_refused() -> None:
    error = InferenceError(ErrorCode.INVALID_ARGUMENT, "input 'x': expected FP32")
    with pytest.raises(InferenceError, match="expected FP32") as raised:
        _read(encode_error(error))
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    huge = [(MAX_FRAME + 1).to_bytes(4, "little")]
    with pytest.raises(ConnectionError, match="frame header"):
        _read(huge)


# -- the handshake and the limits, over real loopback sockets (no Ray) --------------------------
SECRET = b"s" * 32
PREFIX = "direct/app/m-v1/"
LIMITS = FrameLimits({"x": (np.dtype(np.float32), (-1, 3))}, max_batch_rows=4, max_elements=30)
X = np.arange(6, dtype=np.float32).reshape(2, 3)


class MemoryDirectory:
    """A Directory in a dict: what Ray's KV is to a gateway (serve/ray/internals.py)."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    def shared_secret(self, name: str) -> bytes:
        return SECRET

    def publish(self, key: str, address: str) -> None:
        self.entries[key] = address

    def listing(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self.entries.items() if k.startswith(prefix)}

    def remove(self, key: str) -> None:
        self.entries.pop(key, None)


class Replica:
    """A DirectServer on 127.0.0.1 that records what it computed and whom it refused."""

    def __init__(self) -> None:
        self.computed: list[int] = []
        self.refused: list[str] = []
        self.directory = MemoryDirectory()
        self.server = DirectServer(
            self._run, self.directory, PREFIX + "r1", SECRET, LIMITS, self.refused.append
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.computed.append(len(feeds["x"]))
        return {"y": feeds["x"].sum(axis=1)}

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.server.address.rsplit(":", 1)
        return await asyncio.open_connection(host, int(port))


def _with_replica(scenario: Any) -> Any:
    async def main() -> Any:
        replica = Replica()
        await replica.server.start("127.0.0.1")
        try:
            return await scenario(replica)
        finally:
            replica.server.close()

    return asyncio.run(main())


def _pool(replica: Replica, secret: bytes = SECRET) -> DirectPool:
    pool = DirectPool("m-v1", replica.directory, PREFIX, secret)
    pool.refresh()  # what the router's health thread does every second
    return pool


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the peer closed the connection without sending another byte (a reset counts:
    the replica closes with the peer's unread bytes still queued)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


def test_a_router_with_the_secret_is_answered_and_one_without_falls_back() -> None:
    async def scenario(replica: Replica) -> None:
        answer = await _pool(replica).run({"x": X})
        assert answer is not None and answer["y"].tolist() == [3.0, 12.0]
        assert await _pool(replica, b"t" * 32).run({"x": X}) is None  # the handle takes it
        assert replica.computed == [2] and replica.refused == ["proof"]

    _with_replica(scenario)


def test_a_replica_publishes_its_endpoint_while_it_runs_and_removes_it_when_it_stops() -> None:
    async def scenario(replica: Replica) -> None:
        assert replica.directory.entries == {PREFIX + "r1": replica.server.address}
        replica.server.close()
        assert replica.directory.entries == {}

    _with_replica(scenario)


def test_a_draining_replica_is_unlisted_first_answers_what_it_has_then_closes() -> None:
    """Scale-down's order: routers stop choosing the replica (unlisted: a refresh drops it),
    a frame sent meanwhile on a pooled connection is still answered, then the connections
    close and a late frame goes through the handle (the pool answers None)."""

    async def scenario(replica: Replica) -> None:
        pool = _pool(replica)
        assert (await pool.run({"x": X})) is not None and pool.live() == 1
        drain = asyncio.create_task(replica.server.drain(notice_s=0.3))
        await asyncio.sleep(0.05)
        assert replica.directory.entries == {}  # unlisted at once
        with pytest.raises(OSError):
            await replica.connect()  # no new connection
        answer = await pool.run({"x": X})  # within the notice: the pooled connection answers
        assert answer is not None and replica.computed == [2, 2]
        await asyncio.wait_for(drain, 5)  # returns once every connection is closed
        assert await pool.run({"x": X}) is None and replica.computed == [2, 2]
        pool.refresh()
        assert pool.live() == 0

    _with_replica(scenario)


def test_a_strangers_well_formed_frame_is_never_computed_and_is_counted() -> None:
    async def scenario(replica: Replica) -> None:
        reader, writer = await replica.connect()
        assert (await reader.readexactly(len(HELLO) + 32)).startswith(HELLO)
        frame = encode({"x": np.zeros((4, 3), np.float32)})  # a frame, no proof
        assert sum(map(len, frame)) > 64  # as long as a proof: read as one, and wrong
        writer.writelines(frame)
        assert await _closed(reader)
        assert replica.computed == [] and replica.refused == ["proof"]

    _with_replica(scenario)


def test_a_replayed_handshake_is_refused() -> None:
    async def scenario(replica: Replica) -> None:
        recorded: list[bytes] = []
        reader, writer = await replica.connect()
        spy = _Spy(writer, recorded)
        await prove(reader, spy, SECRET)  # type: ignore[arg-type]
        writer.close()
        reader, writer = await replica.connect()
        await reader.readexactly(len(HELLO) + 32)  # a fresh nonce
        writer.write(recorded[0])
        writer.writelines(encode({"x": X}))
        assert await _closed(reader)
        assert replica.computed == [] and replica.refused == ["proof"]

    _with_replica(scenario)


def test_a_silent_peer_is_dropped_after_the_handshake_time(monkeypatch: Any) -> None:
    monkeypatch.setattr("serve.transport.direct.HANDSHAKE_S", 0.2)

    async def scenario(replica: Replica) -> None:
        reader, _ = await replica.connect()
        await reader.readexactly(len(HELLO) + 32)
        assert await _closed(reader)  # nothing sent: closed by the replica, not by us
        assert replica.refused == ["timeout"]

    _with_replica(scenario)


@pytest.mark.parametrize(
    "feeds",
    [
        {"z": X},  # not the input
        {"x": X.astype(np.float64)},  # not its datatype
        {"x": np.zeros((2, 4), np.float32)},  # not its shape
        {"x": np.zeros((11, 3), np.float32)},  # 33 elements: more than any batch
        {"x": X, "extra": X},
    ],
)
def test_a_frame_beyond_what_a_batch_can_be_is_dropped_unread(feeds: dict[str, Any]) -> None:
    async def scenario(replica: Replica) -> None:
        reader, writer = await replica.connect()
        await prove(reader, writer, SECRET)
        writer.writelines(encode(feeds))
        assert await _closed(reader)
        assert replica.computed == [] and replica.refused == ["frame"]

    _with_replica(scenario)


@pytest.mark.parametrize("demand", [["r1", "many", 0], ["r1", 1], "r1", [None, [], 2]])
def test_a_frame_with_a_malformed_demand_report_is_dropped_uncomputed(demand: Any) -> None:
    async def scenario(replica: Replica) -> None:
        reader, writer = await replica.connect()
        await prove(reader, writer, SECRET)
        chunks = encode({"x": X})
        head = orjson.loads(chunks[1]) | {"demand": demand}
        raw = orjson.dumps(head)
        writer.writelines([struct.pack("<I", len(raw)), raw, *chunks[2:]])
        assert await _closed(reader)
        assert replica.computed == [] and replica.refused == ["frame"]
        assert replica.server.demand.stats(time.monotonic()) == {}

    _with_replica(scenario)


def test_a_batch_of_many_small_requests_or_one_large_request_fits() -> None:
    assert LIMITS.check([("x", np.dtype(np.float32), [4, 3], 12)]) is None  # max_batch_rows
    assert LIMITS.check([("x", np.dtype(np.float32), [10, 3], 30)]) is None  # max_elements
    huge_header = [(MAX_HEADER + 1).to_bytes(4, "little")]

    async def scenario(replica: Replica) -> None:
        reader, writer = await replica.connect()
        await prove(reader, writer, SECRET)
        writer.writelines(huge_header)
        assert await _closed(reader)
        assert replica.refused == ["frame"]

    _with_replica(scenario)


class _Spy:
    """A writer that records what it writes."""

    def __init__(self, writer: asyncio.StreamWriter, record: list[bytes]) -> None:
        self._writer, self._record = writer, record

    def write(self, data: bytes) -> None:
        self._record.append(data)
        self._writer.write(data)


def test_a_frame_carries_its_time_left_and_one_with_none_left_is_not_computed() -> None:
    async def scenario(replica: Replica) -> None:
        pool = _pool(replica)
        answer = await pool.run({"x": X}, deadline=time.monotonic() + 0.5)
        assert answer is not None and replica.computed == [2]
        with pytest.raises(InferenceError) as info:
            reader, writer = await replica.connect()
            await prove(reader, writer, SECRET)
            writer.writelines(encode({"x": X}, remaining_s=-0.001))
            await read(reader)
        assert info.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert replica.computed == [2] and replica.refused == []  # answered, not dropped

    _with_replica(scenario)
    frame = b"".join(encode({"x": X}, remaining_s=0.25))
    feeds, remaining, demand, _ = asyncio.run(_read_frame(frame))
    assert remaining == 0.25 and feeds["x"].tolist() == X.tolist() and demand is None


def test_a_routers_frames_carry_what_it_holds_and_the_replica_keeps_the_fresh_reports() -> None:
    """The queues are in the routers: each frame says what its router holds for the version,
    and the replica reports the latest from each router heard from lately (Ray's autoscaler
    reads it), dropping one gone quiet."""

    async def scenario(replica: Replica) -> None:
        pool = _pool(replica)
        pool.report = lambda: (7, 2)
        assert await pool.run({"x": X}) is not None
        stats = replica.server.demand.stats(time.monotonic())
        assert stats == {f"demand:{ROUTER_ID}": 7.0, f"shed:{ROUTER_ID}": 2.0}

    _with_replica(scenario)
    frame = b"".join(encode({"x": X}, demand=Demand("r9", 3, 1)))
    assert asyncio.run(_read_frame(frame)).demand == Demand("r9", 3, 1)
    book = DemandBook(fresh_s=5.0)
    book.note(Demand("a", 4, 0), now=100.0)
    book.note(Demand("b", 1, 9), now=103.0)
    book.note(Demand("a", 6, 1), now=104.0)  # the latest counts
    assert book.stats(now=106.0) == {"demand:a": 6.0, "shed:a": 1.0, "demand:b": 1.0, "shed:b": 9.0}
    assert book.stats(now=108.5) == {"demand:a": 6.0, "shed:a": 1.0}  # b has gone quiet


async def _read_frame(frame: bytes) -> Frame:
    reader = asyncio.StreamReader()
    reader.feed_data(frame)
    return await read_frame(reader, LIMITS)


# -- router to router: catalog models placed by rendezvous hashing (PeerPool) ------------------
class Router:
    """A router replica's peer server on 127.0.0.1: answers a catalog model's batch with its
    own name, for the models it has."""

    def __init__(self, name: str, directory: MemoryDirectory, models: set[str]) -> None:
        self.name, self.models, self.refused = name, models, []  # type: ignore[var-annotated]
        self.server = DirectServer(
            lambda feeds: feeds,
            directory,
            f"{PREFIX}{name}",
            SECRET,
            self._limits,
            self.refused.append,
            run_model=self._run,
        )

    def _limits(self, key: str | None) -> FrameLimits:
        return LIMITS if key in self.models else FrameLimits(None, 4, 30)

    async def _run(
        self, key: str, feeds: dict[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        if key not in self.models:
            raise InferenceError(ErrorCode.UNAVAILABLE, f"{key} is not in this catalog")
        return {"who": np.array([ord(c) for c in self.name], np.int32)}


def test_each_catalog_model_runs_on_the_router_it_is_placed_on_and_here_when_that_is_gone() -> None:
    from serve.transport.direct import PeerPool

    keys = [f"m{i}:1" for i in range(60)]

    async def main() -> None:
        directory = MemoryDirectory()
        a, b = (Router(n, directory, set(keys)) for n in ("a", "b"))
        own = await a.server.start("127.0.0.1")
        await b.server.start("127.0.0.1")
        pool = PeerPool("routers", directory, PREFIX, SECRET)
        pool.own = own
        pool.refresh()
        x = {"x": X}
        answers = {k: await pool.run_model(k, x, time.monotonic() + 5) for k in keys}
        here = [k for k, v in answers.items() if v is None]
        there = [k for k, v in answers.items() if v is not None]
        assert all(bytes(answers[k]["who"].astype(np.uint8)) == b"b" for k in there)  # type: ignore[index]
        assert len(here) >= 15 and len(there) >= 15  # spread over both (60 keys, 2 routers)
        assert all(pool.owner(k) == own for k in here)
        # The same placement every time, from any router: a's view and b's agree.
        other = PeerPool("routers", directory, PREFIX, SECRET)
        other.refresh()
        assert all(other.owner(k) == pool.owner(k) for k in keys)
        # A model b does not have (yet): b answers UNAVAILABLE, the batch runs here, and the
        # connection stays in step and in use.
        b.models.discard(there[0])
        assert await pool.run_model(there[0], x, time.monotonic() + 5) is None
        assert b.refused == []
        assert await pool.run_model(there[1], x, time.monotonic() + 5) is not None
        # Beyond the limits even so (too many elements): dropped and counted.
        big = {"x": np.zeros((40, 3), np.float32)}
        assert await pool.run_model(there[0], big, time.monotonic() + 5) is None
        assert b.refused == ["frame"]
        # b gone: everything runs here.
        b.server.close()
        pool.refresh()
        assert all([await pool.run_model(k, x, time.monotonic() + 5) is None for k in there])
        a.server.close()

    asyncio.run(main())


def test_a_replica_missing_from_the_listing_keeps_what_it_held_rather_than_follow_it() -> None:
    from serve.transport.direct import PeerPool

    directory = MemoryDirectory()
    directory.publish(PREFIX + "a", "10.0.0.1:1")
    directory.publish(PREFIX + "b", "10.0.0.2:1")
    keys = {f"m{i}:1" for i in range(40)}
    a, b = (PeerPool("pool", directory, PREFIX, SECRET) for _ in range(2))
    a.own, b.own = "10.0.0.1:1", "10.0.0.2:1"
    a.refresh()
    b.refresh()
    held_a, held_b = a.placed(keys, ()), b.placed(keys, ())
    assert held_a | held_b == keys and not held_a & held_b and held_a and held_b
    # A router could not reach b and removed its address (until b puts it back): a takes
    # every model, and b keeps those it held, rather than drop them.
    directory.remove(PREFIX + "b")
    a.refresh()
    b.refresh()
    assert a.placed(keys, held_a) == keys
    assert b.placed(keys, held_b) == held_b
    assert b.placed(keys - {min(held_b)}, held_b) == held_b - {min(held_b)}  # not a removed one
    # b listed again: each holds its own share once more.
    directory.publish(PREFIX + "b", "10.0.0.2:1")
    a.refresh()
    b.refresh()
    assert (a.placed(keys, keys), b.placed(keys, held_b)) == (held_a, held_b)


def test_a_frame_naming_a_model_badly_is_refused_before_its_tensors() -> None:
    from serve.transport.direct import FrameError

    named = b"".join(encode({"x": X}, model="m1:1"))
    assert asyncio.run(_read_frame(named)).model == "m1:1"
    for model in (123, ["m"], "m" * 513):
        head = orjson.dumps({"tensors": [["x", "<f4", [2, 3]]], "model": model})
        frame = struct.pack("<I", len(head)) + head  # no tensor bytes: never read
        with pytest.raises(FrameError, match="frame model"):
            asyncio.run(_read_frame(frame))
    # A model this replica does not serve: any numeric tensors, each within the limit, then
    # answered UNAVAILABLE by its server; more than that is refused before it is read.
    unknown = FrameLimits(None, max_batch_rows=4, max_elements=30)

    async def read_unknown(head: bytes) -> Frame:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack("<I", len(head)) + head + b"\0" * (6 * 4))
        reader.feed_eof()
        return await read_frame(reader, lambda model: unknown)

    for tensors, refused in (([["x", "<f4", [2, 3]]], False), ([["x", "<f4", [11, 3]]], True)):
        head = orjson.dumps({"tensors": tensors, "model": "m9:1"})
        if refused:
            with pytest.raises(FrameError, match="not served here"):
                asyncio.run(read_unknown(head))
        else:
            assert asyncio.run(read_unknown(head)).model == "m9:1"
