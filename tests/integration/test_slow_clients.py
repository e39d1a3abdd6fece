"""Slow clients against the session's gateway, through its HAProxy front door, with the shipped
connection limits: more slow senders than the old defaults let in (1,024 router slots, 4,096
HAProxy connections) cannot stop normal requests from being answered, and each slow one gets
its answer at its deadline (408), whatever headers it sends to switch Ray's limits off."""

from __future__ import annotations

import asyncio
import re
import resource
import time
from urllib.parse import urlsplit

import requests

from serve.ingress import haproxy
from tests.integration.bodies import X_BC, infer_body
from tests.integration.conftest import Gateway

SLOW_BODIES = 1_200  # > the router's old 1,024 slots
SLOW_HEADS = 4_200  # > HAProxy's old 4,096 connections
NORMAL = 20
#: Ray's switches, sent by half the slow senders: stripped, and modelgate's deadline is its own.
OPT_OUT = b"x-request-timeout-seconds: 0\r\nx-request-disconnect-disabled: ?1\r\n"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _enough_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SLOW_HEADS + 2_000
    assert hard >= want, f"this test needs {want} open files; the hard limit is {hard}"
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _open(gateway: Gateway, head: bytes, count: int) -> list[Connection]:
    """`count` connections that each sent `head` and then nothing more."""
    address = urlsplit(gateway.base)
    connections = []
    for i in range(count):
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(head + (OPT_OUT if i % 2 else b""))
        connections.append((reader, writer))
    return connections


async def _answered_at(connection: Connection, within_s: float) -> tuple[bytes, float]:
    """The response the gateway sent a stalled client (head and body), and when it came."""
    reader, writer = connection
    async with asyncio.timeout(within_s):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        body = await (reader.readexactly(int(length.group(1))) if length else reader.read())
    writer.close()
    return head + body, time.monotonic()


def _normal_requests_are_served(gateway: Gateway) -> float:
    """Each answered as usual, within the model's own deadline (the session config's 30 s);
    returns when the last was."""
    url = f"{gateway.base}/v2/models/breast_cancer/versions/1/infer"
    for i in range(NORMAL):
        response = requests.post(url, json=infer_body(X_BC[i : i + 1]), timeout=30)
        assert response.status_code == 200, response.text
    return time.monotonic()


def test_slow_body_senders_get_408_at_their_deadline_and_hold_no_one_up(
    gateway: Gateway,
) -> None:
    _enough_files()
    deadline_s = gateway.config["applications"][0]["args"]["limits"]["body_timeout_s"]
    head = (
        b"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n"
    )

    async def main() -> tuple[float, list[tuple[bytes, float]]]:
        connections = await _open(gateway, head, SLOW_BODIES)
        for _, writer in connections:
            writer.write(b'\r\n{"inputs": [')  # the body begins, and stops
        served = await asyncio.to_thread(_normal_requests_are_served, gateway)
        answers = await asyncio.gather(*(_answered_at(c, deadline_s + 60) for c in connections))
        return served, answers

    served, answers = asyncio.run(main())
    assert all(a.startswith(b"HTTP/1.1 408 ") for a, _ in answers), {a[:40] for a, _ in answers}
    assert all(f"not received within {deadline_s:g} s".encode() in a for a, _ in answers)
    assert served < min(t for _, t in answers)  # all served while every slow one held on


def test_slow_header_senders_are_dropped_by_haproxy_and_hold_no_one_up(
    gateway: Gateway,
) -> None:
    _enough_files()
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n"  # never ends

    async def main() -> tuple[float, list[tuple[bytes, float]]]:
        connections = await _open(gateway, head, SLOW_HEADS)
        served = await asyncio.to_thread(_normal_requests_are_served, gateway)
        within = haproxy.HEAD_TIMEOUT_S + 60
        answers = await asyncio.gather(*(_answered_at(c, within) for c in connections))
        return served, answers

    served, answers = asyncio.run(main())
    assert all(a.startswith(b"HTTP/1.1 408 ") for a, _ in answers), {a[:40] for a, _ in answers}
    assert served < min(t for _, t in answers)  # all served while every slow one held on
