"""Every listening socket of the gateway's processes is one the README's ports table names, and
binds no wider than its role there (read from /proc: no traffic).

The gateway's processes: this test session's Ray (it is the driver), its workers and their
children (HAProxy among them); the test's own MLflow server is not the gateway's."""

from __future__ import annotations

import os
import re
from pathlib import Path

from serve.cli.supervisor import descendants
from serve.ingress import lean
from serve.ray import launcher
from serve.ray.internals import KVDirectory
from serve.transport.direct import kv_prefix
from tests.integration.conftest import APP, Gateway, Listener, listeners

EVERYWHERE = {"0.0.0.0", "::"}
#: Ray's own processes: their ports are Ray's (GCS, raylet, agents, workers), cluster-internal.
RAY_PROCESSES = re.compile(
    rb"(gcs_server|raylet|dashboard\.py|monitor\.py|log_monitor\.py|ray::(DashboardAgent"
    rb"|RuntimeEnvAgent|ServeController|HAProxyManager|IDLE|ProxyActor|ServeReplica:))"
)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _tree(root: int) -> set[int]:
    """`root` and its descendants, leaving out the test's MLflow server and its children."""
    return {root} | {pid for pid in descendants(root) if b"mlflow" not in _cmdline(pid)}


def _worker_port(pid: int) -> int | None:
    """The port Ray's core worker in `pid` serves on, from its log (Ray's own, every worker)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # the session's
    for log in logs.glob(f"python-core-worker-*_{pid}.log"):
        found = re.search(r"worker server started, listening on port (\d+)", log.read_text())
        if found:
            return int(found.group(1))
    return None


def _direct_addresses() -> set[tuple[str, int]]:
    """The direct endpoints every dedicated version's replicas published (autoscaled ones too):
    every entry under the application's part of the directory."""
    every_deployment = kv_prefix(APP, "d").removesuffix("d/")
    addresses = set()
    for address in KVDirectory().listing(every_deployment).values():
        host, port = address.rsplit(":", 1)
        addresses.add((host, int(port)))
    return addresses


def _env_port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def test_every_listening_socket_is_in_the_table_and_binds_no_wider(gateway: Gateway) -> None:
    import ray

    config = gateway.config
    http_host, http_port = config["http_options"]["host"], config["http_options"]["port"]
    grpc_port = config["grpc_options"]["port"]
    metrics = config["applications"][0]["args"]["metrics"]
    node_ip = ray.util.get_node_ip_address()
    direct = _direct_addresses()
    folder = str(launcher.ingress_folder()).encode()
    haproxy_roles = {
        http_port: ("HTTP front door", {http_host}),
        grpc_port: ("gRPC front door", {http_host}),
        _env_port("RAY_SERVE_HAPROXY_STATS_PORT", 8404): ("HAProxy stats", {"127.0.0.1"}),
        _env_port("RAY_SERVE_HAPROXY_METRICS_PORT", 9101): ("HAProxy metrics", {"127.0.0.1"}),
    }
    http_range = range(_env_port("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", 30000), 31001)
    grpc_range = range(_env_port("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", 40000), 41001)
    fallback = {
        _env_port("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", 8500): {http_host},
        _env_port("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500): EVERYWHERE,  # Ray forces it
    }

    def role(listener: Listener, spare: dict[int, int]) -> tuple[str, set[str] | None]:
        """The table's row for a socket and the binds it allows (None: any; Ray's own)."""
        cmdline, port = _cmdline(listener.pid), listener.port
        if cmdline.startswith(b"/") and b"haproxy" in cmdline and folder in cmdline:
            return haproxy_roles.get(port, ("unnamed HAProxy port", set()))
        if not RAY_PROCESSES.search(cmdline) and listener.pid != os.getpid():
            return "a process the table does not name", set()
        if port == _worker_port(listener.pid):
            return "Ray's core worker port", None
        if cmdline.startswith(b"ray::ServeReplica:"):
            if (listener.address, port) in direct:
                return "direct transport", {node_ip}
            if port == metrics["port"]:
                return "node exporter", {metrics["host"]}
            if b":Router" in cmdline and port in lean.PORTS:  # serve/ingress/lean.py
                lean_listeners[listener.pid] += 1
                return "router HTTP and gRPC (lean)", {http_host}
            if b":Router" in cmdline and port in http_range:
                return "router HTTP (direct ingress)", {http_host}
            if b":Router" in cmdline and port in grpc_range:
                return "router gRPC (direct ingress)", EVERYWHERE  # Ray forces it
            if listener.address in EVERYWHERE and spare[listener.pid] == 0:
                spare[listener.pid] += 1  # one a replica: Ray Serve's replica-to-replica gRPC
                return "Ray Serve's replica gRPC", None
            return "unnamed replica port", set()
        if cmdline.startswith(b"ray::ProxyActor") and port in fallback:
            return "fallback proxy", fallback[port]
        if cmdline.startswith(b"ray::ServeReplica") or cmdline.startswith(b"ray::ProxyActor"):
            return "unnamed Serve port", set()
        return "Ray's own", None

    spare: dict[int, int] = dict.fromkeys(_tree(os.getpid()), 0)
    lean_listeners: dict[int, int] = dict.fromkeys(spare, 0)
    seen, wrong = set(), []
    for listener in listeners():
        if listener.pid not in spare:
            continue
        name, allowed = role(listener, spare)
        seen.add(name)
        if allowed is not None and listener.address not in allowed:
            wrong.append((name, listener, _cmdline(listener.pid)[:60]))
    assert not wrong, wrong
    for expected in ("HTTP front door", "gRPC front door", "HAProxy stats", "HAProxy metrics"):
        assert expected in seen  # the table's rows are what runs (the test looked)
    assert {"direct transport", "node exporter", "router HTTP (direct ingress)"} <= seen
    if lean.ingress() == "lean":  # a router replica's own HTTP and gRPC listeners (one each)
        assert "router HTTP and gRPC (lean)" in seen
        assert max(lean_listeners.values()) == 2, lean_listeners
