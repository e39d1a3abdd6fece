"""Both ingress settings on a real gateway: `modelgate serve` with `MODELGATE_INGRESS=lean` (the
default: the routers' own listeners, serve/ingress/lean.py) and with `ray` (Ray Serve's direct
ingress), each in a process of its own with its own Ray (tests/supervised.py), two router
replicas behind Ray's HAProxy, hardened (and, lean, pointed at the routers' own listeners).

Asserted from causes: HAProxy's own per-server counters (its admin socket) say which listener
took the requests; the routers' lean ports are the ones their replica ids give; a hostile
client straight at a router's port meets the gateway's limits; a rolling restart of the routers
(new replica ids, new ports, the old ones drained) fails no request. The rest of the suite runs
on the default, lean."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from serve.ingress import haproxy, lean
from tests.integration.traffic import Traffic
from tests.supervised import READY, ROW, Supervised, answer, cmdline, supervised_gateway, wait_log

#: The limits a hostile client meets, small enough to reach in a test.
BODY_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 1 << 20
ROUTERS = 2


@pytest.fixture(scope="module", params=lean.INGRESSES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Supervised]:
    tmp = tmp_path_factory.mktemp(request.param)
    with supervised_gateway(
        tmp,
        name="lean",
        prefix="/lean",
        env={lean.INGRESS_ENV: request.param},
        router={"num_replicas": ROUTERS},
        limits={"body_timeout_s": BODY_TIMEOUT_S, "max_body_bytes": MAX_BODY_BYTES},
    ) as served:
        wait_log(served.log, READY, count=1, timeout_s=240)
        answer(served.url, timeout_s=60)
        deadline = time.monotonic() + 60
        while len(routers(served)) != ROUTERS:  # both in HAProxy's configuration
            assert time.monotonic() < deadline, routers(served)
            time.sleep(0.5)
        yield served


def setting(gateway: Supervised) -> str:
    """The gateway's ingress setting: "lean" or "ray"."""
    return gateway.env[lean.INGRESS_ENV]


def expected_port(gateway: Supervised, replica_id: str, port: int, protocol: str) -> bool:
    """Whether HAProxy sends a router's `protocol` requests where the setting says: its lean
    listener's port, or a port of Ray's direct-ingress range (tests/supervised.py sets it)."""
    if setting(gateway) == "lean":
        return port == lean.lean_port(replica_id, protocol)
    low = int(gateway.env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{protocol.upper()}_PORT"])
    high = int(gateway.env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{protocol.upper()}_PORT"])
    return low <= port <= high


def folder(gateway: Supervised) -> Path:
    """Its HAProxy's private folder: new since it started, and serving its application."""
    (path,) = [
        new
        for new in set(Path("/tmp").glob("mg-*")) - gateway.folders
        if any("\nbackend http-lean\n" in c.read_text() for c in new.glob("**/haproxy.cfg"))
    ]
    return path


def routers(gateway: Supervised, backend: str = "http-lean") -> dict[str, int]:
    """The router replicas in one of HAProxy's backends, by replica id: the port it sends to."""
    (path,) = folder(gateway).glob("**/haproxy.cfg")  # in the node's own folder
    while not (text := path.read_text()).startswith(haproxy.MARK):
        time.sleep(0.1)  # Ray wrote it, and the launcher is about to harden it
    section = text.split(f"\nbackend {backend}\n", 1)[1].split("\nbackend ", 1)[0]
    found = re.findall(r"(?m)^    server SERVE_REPLICA_lean-Router-(\w+) [\d.]+:(\d+) ", section)
    return {rid: int(port) for rid, port in found}


def server_requests(gateway: Supervised, backend: str = "http-lean") -> dict[str, int]:
    """HAProxy's count of requests (stot) per server of one of the application's backends."""
    (sock_path,) = folder(gateway).glob("*/admin.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    lines = text.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", None):
            out[row["svname"]] = int(row["stot"] or 0)
    return out


def counted_since(
    gateway: Supervised, before: dict[str, int], answered: int, backend: str = "http-lean"
) -> dict[str, int]:
    """Each server's requests since `before`, once HAProxy has counted the `answered` ones:
    it counts a request when its stream ends, which may be a moment after its answer went out
    (one run read 198 of 200)."""
    deadline = time.monotonic() + 10
    while True:
        now = server_requests(gateway, backend)
        grown = {name: now[name] - before.get(name, 0) for name in now}
        if sum(grown.values()) >= answered or time.monotonic() > deadline:
            return grown
        time.sleep(0.2)


def test_requests_reach_the_routers_listeners_through_haproxy(gateway: Supervised) -> None:
    ports = routers(gateway)
    assert len(ports) == ROUTERS, ports
    assert all(expected_port(gateway, rid, port, "http") for rid, port in ports.items()), ports
    for port in ports.values():  # each answers HAProxy's health check itself
        health = requests.get(f"http://127.0.0.1:{port}{lean.HEALTH_PATH}", timeout=5)
        assert health.status_code == 200 and health.text == "success"
    before = server_requests(gateway)
    with requests.Session() as session:
        answers = [session.post(gateway.url, json=ROW, timeout=10) for _ in range(200)]
    assert all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    assert {a.json()["model_version"] for a in answers} == {"1"}
    grown = counted_since(gateway, before, 200)
    lean_servers = {n for n in grown if n.startswith("SERVE_REPLICA_lean-Router-")}
    assert len(lean_servers) == ROUTERS, grown
    # every request went to a router (its lean listener: the ports above), none to Ray's
    # fallback proxy
    assert sum(grown[n] for n in lean_servers) >= 200, grown
    assert all(grown[n] == 0 for n in grown if n not in lean_servers), grown
    assert all(grown[n] > 0 for n in lean_servers), grown  # HAProxy balances over both


def test_grpc_reaches_the_routers_grpc_listeners_and_meets_the_limit(
    gateway: Supervised,
) -> None:
    import grpc

    from serve.protos import grpc_predict_v2_pb2 as pb
    from serve.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    metadata = (("application", "lean"),)
    before = server_requests(gateway, "grpc-lean")
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [stub.ModelInfer(request, metadata=metadata, timeout=10) for _ in range(50)]
    assert {a.model_version for a in answers} == {"1"}
    grown = counted_since(gateway, before, 50, "grpc-lean")
    routers_ = {n for n in grown if n.startswith("SERVE_REPLICA_lean-Router-")}
    assert len(routers_) == ROUTERS and sum(grown[n] for n in routers_) >= 50, grown
    assert all(grown[n] == 0 for n in grown if n not in routers_), grown
    grpc_ports = routers(gateway, "grpc-lean")
    assert all(expected_port(gateway, r, p, "grpc") for r, p in grpc_ports.items()), grpc_ports
    # straight at a router's gRPC port: a message past the body limit is refused
    with grpc.insecure_channel(f"127.0.0.1:{next(iter(grpc_ports.values()))}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        big = pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"x" * MAX_BODY_BYTES])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(big, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ModelInfer(request, timeout=10).model_version == "1"


def _exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Sends `data` to a router's port, then reads until the server closes; the answer and the
    seconds from the send to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        started = time.monotonic()
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer, time.monotonic() - started


def test_a_hostile_client_straight_at_a_routers_port_meets_the_gateways_limits(
    gateway: Supervised,
) -> None:
    port = next(iter(routers(gateway).values()))
    path = "/lean/v2/models/iris/infer"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{lean.ROOT_HEADER}: /lean\r\n"  # as HAProxy sends it (Ray's ingress ignores it)
    )
    if setting(gateway) == "lean":  # Ray's ingress has no head deadline (README: ports)
        # a slow header: 408 at the head deadline, from the listener itself
        answer_, took = _exchange(port, head.encode())
        assert answer_.startswith(b"HTTP/1.1 408 "), answer_
        assert b"request head not received" in answer_
        assert lean.HEAD_TIMEOUT_S - 0.5 <= took < lean.HEAD_TIMEOUT_S + 5, took
    # a slow body: 408 at the router's body deadline
    answer_, took = _exchange(port, (head + "Content-Length: 1000\r\n\r\n{").encode())
    assert b" 408 " in answer_.split(b"\r\n", 1)[0], answer_
    assert b'"error"' in answer_
    assert BODY_TIMEOUT_S - 0.5 <= took < BODY_TIMEOUT_S + 5, took
    # an oversized body: refused by its declared length, before it is read
    big = head + f"Content-Length: {MAX_BODY_BYTES + 1}\r\nConnection: close\r\n\r\n"
    answer_, _ = _exchange(port, big.encode())
    assert b" 413 " in answer_.split(b"\r\n", 1)[0] and b'"error"' in answer_, answer_
    # malformed JSON, through the front door and straight: 400 naming what was wrong
    for url in (gateway.url, f"http://127.0.0.1:{port}{path}"):
        bad = requests.post(
            url, data=b'{"inputs": [', headers={lean.ROOT_HEADER: "/lean"}, timeout=10
        )
        assert bad.status_code == 400 and "error" in bad.json(), bad.text
    assert requests.post(gateway.url, json=ROW, timeout=10).status_code == 200


def _gcs_address(gateway: Supervised) -> str:
    """The supervised Ray's GCS address, as its raylet was given it."""
    from serve.cli.supervisor import descendants

    for pid in descendants(gateway.proc.pid):
        found = re.search(r"--gcs-address=(\S+)", cmdline(pid))
        if "raylet" in cmdline(pid) and found:
            return found.group(1)
    raise AssertionError("no raylet under the supervised gateway")


def test_a_rolling_restart_of_the_routers_fails_no_request(
    gateway: Supervised, tmp_path: Path
) -> None:
    """The routers' options change: Ray starts new router replicas (new ids, so new ports),
    HAProxy moves to them, and the old ones drain (Ray's deregistration window, then, lean,
    the listener's own drain) before they stop."""
    old = routers(gateway)
    config = yaml.safe_load(gateway.config.read_text())
    args = config["applications"][0]["args"]
    args["router"] = {**args.get("router", {}), "max_ongoing_requests": 3000}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    target = SimpleNamespace(base=gateway.base.removesuffix("/lean"))
    with Traffic(target, "/lean", "iris", rate=100) as traffic:  # type: ignore[arg-type]
        time.sleep(2)
        deploy = subprocess.run(
            [
                sys.executable,
                "-m",
                "serve.cli",
                "serve",
                str(changed),
                "--address",
                _gcs_address(gateway),
                "--no-block",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **gateway.env, "RAY_AUTH_MODE": "token"},  # token: in ~/.ray
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        deadline = time.monotonic() + 240
        while set(routers(gateway)) & set(old) or len(routers(gateway)) != ROUTERS:
            assert time.monotonic() < deadline, (old, routers(gateway))
            time.sleep(1)
        time.sleep(3)  # traffic on the new routers alone
    new = routers(gateway)
    print(f"rolling restart: routers {old} -> {new}; outcomes {dict(traffic.outcomes)}")
    assert sum(traffic.outcomes.values()) > 0
    assert traffic.outcomes.keys() == {"ok"}, traffic.failures()
    # the old routers are gone, their listeners with them
    for port in set(old.values()) - set(new.values()):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
