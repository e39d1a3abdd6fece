"""A Ray cluster of real nodes on one machine: each node a Linux network namespace with its own
address on a private bridge, its own mount namespace (a private /tmp, where Ray keeps its session
and modelgate its metrics and artifact cache, and the repository's .modelgate/ hidden) and its own
PID namespace, whose first process holds the node: killing it kills every process of the node at
once, as losing a host would.

Everything made here is named after the cluster's id and removed by `stop()`, even after a
failure: the nodes' processes (by killing each node's first process), the veth links, the
namespaces and the bridge.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: The first process of a node: mounts a private tmpfs on each folder named (keeping the
#: repository visible where it lies below one, as CI's checkout under /tmp does), then reaps
#: orphans until killed.
HOLDER = """
import os, subprocess, sys, time
repo, park, *targets = sys.argv[1:]
def mount(*args):
    subprocess.run(["mount", *args], check=True)
for target in targets:
    keep = repo.startswith(target.rstrip("/") + "/")
    if keep:
        os.makedirs(park)
        mount("--rbind", repo, park)
    os.makedirs(target, exist_ok=True)
    mount("-t", "tmpfs", "tmpfs", target)
    if keep:
        os.makedirs(repo, exist_ok=True)
        mount("--move", park, repo)
        os.rmdir(park)
print("ready", flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Node:
    name: str
    netns: str
    address: str
    holder: subprocess.Popen[str] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # every command of the node gets it
    link: str = ""  # its veth on the bridge

    @property
    def pid(self) -> int:
        """The node's first process, as this machine sees it."""
        assert self.holder is not None
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text()
        return int(children.split()[0])

    @property
    def alive(self) -> bool:
        return self.holder is not None and self.holder.poll() is None

    def argv(self, *command: str) -> list[str]:
        """`command` run inside the node (its network, mounts and processes)."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "-p", "--", *command]

    def popen(
        self, *command: str, env: dict[str, str] | None = None, log: Path
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(
                self.argv(*command),
                env={**os.environ, **self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def run(
        self, *command: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*command),
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
        )

    def unplug(self) -> None:
        """Its cable pulled: packets to and from it are dropped, nothing is refused."""
        _ip("link", "set", self.link, "down")

    def kill(self) -> None:
        """Lose the node: its first process killed, the kernel kills the rest of it."""
        if self.holder is not None and self.holder.poll() is None:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, IndexError):
                os.kill(self.pid, signal.SIGKILL)
            self.holder.wait(timeout=30)
        if self.holder is not None and self.holder.stdout is not None:
            self.holder.stdout.close()
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class Cluster:
    """A bridge and `names` nodes on it; `start()` makes them, `stop()` removes everything."""

    def __init__(self, names: list[str], workdir: Path) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.bridge = f"mgbr{self.id}"
        subnet = 200 + int(self.id, 16) % 50
        self.gateway = f"10.{subnet}.0.1"
        self.workdir = workdir
        self.nodes = {
            name: Node(name, f"mg{self.id}{name}", f"10.{subnet}.0.{11 + i}")
            for i, name in enumerate(names)
        }
        self._links: list[str] = []

    def start(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, node in enumerate(self.nodes.values()):
            _ip("netns", "add", node.netns)
            link = f"mgv{self.id}{i}"
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
            self._links.append(link)
            node.link = link
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", node.netns, "link", "set", "eth0", "up")
            _ip("-n", node.netns, "link", "set", "lo", "up")
            self._hold(node)

    def revive(self, node: Node) -> None:
        """A lost node back, as a host that restarts: its cable plugged in again and a fresh
        first process (an empty /tmp); start Ray on it again to have it rejoin."""
        assert not node.alive, f"{node.name} is running"
        node.processes.clear()
        _ip("link", "set", node.link, "up")
        self._hold(node)

    def _hold(self, node: Node) -> None:
        """The node's first process, in its network namespace, with its own mounts and PIDs."""
        node.holder = subprocess.Popen(
            [
                "ip", "netns", "exec", node.netns,
                "unshare", "--mount", "--pid", "--fork", "--mount-proc",
                "--propagation", "private",
                sys.executable, "-c", HOLDER, str(REPO), f"/mnt/.modelgate-{node.netns}",
                "/tmp", str(REPO / ".modelgate"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        assert node.holder.stdout is not None
        line = node.holder.stdout.readline().strip()
        assert line == "ready", f"node {node.name} did not start: {line}"

    def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.kill()
        for link in self._links:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", link)
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", node.netns)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


def ingress_env(node: Node, folder: str, ingress: str | None = None) -> dict[str, str]:
    """What `modelgate ingress-env FOLDER [--ingress INGRESS]` prints on `node`: HAProxy's
    settings, its files in `folder` (inside the node), the ingress setting."""
    done = node.run(
        str(BIN / "modelgate"), "ingress-env", folder, *(["--ingress", ingress] if ingress else [])
    )
    assert done.returncode == 0, done.stderr
    env = {}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env


def start_ray(
    node: Node,
    head: Node,
    log: Path,
    *,
    port: int,
    env: dict[str, str],
    labels: str,
    dashboard_port: int | None = None,
    num_cpus: int = 2,
) -> subprocess.Popen[bytes]:
    """`ray start --block` on `node`, as an operator runs it: the head (with its dashboard
    when `dashboard_port` is given) when `node is head`, else a node joining it."""
    common = [
        f"--node-ip-address={node.address}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--block",
        f"--labels={labels}",
    ]
    if node is head:
        args = ["--head", f"--port={port}"]
        if dashboard_port is not None:
            args += [
                "--include-dashboard=true",
                f"--dashboard-host={node.address}",
                f"--dashboard-port={dashboard_port}",
            ]
        else:
            args += ["--include-dashboard=false"]
    else:
        args = [f"--address={head.address}:{port}"]
    return node.popen(str(BIN / "ray"), "start", *args, *common, env=env, log=log)


def driver(head: Node, address: str, code: str, timeout: float = 180) -> Any:
    """`code` run as a Ray driver inside `head`, connected to the cluster at `address` (`json`
    and `ray` imported); what it printed last, as JSON."""
    preamble = f"import json, ray\nray.init(address={address!r}, logging_level='ERROR')\n"
    done = head.run(str(BIN / "python"), "-c", preamble + code, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def alive_nodes(head: Node, address: str) -> list[dict[str, Any]]:
    """The cluster's live Ray nodes, as `ray.nodes()` lists them."""
    code = "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))"
    return list(driver(head, address, code))


def serve_replicas(head: Node, address: str, app: str) -> dict[str, list[dict[str, Any]]]:
    """Each deployment of `app`: its replicas' node address and state, from Serve's controller
    (a replica still being placed has no node yet: None)."""
    code = (
        "from serve.ray.internals import serve_details\n"
        f"d = serve_details()['applications'][{app!r}]['deployments']\n"
        "print(json.dumps({k: [{'node_ip': r.get('node_ip'), 'state': str(r['state'])} "
        "for r in v['replicas']] for k, v in d.items()}))"
    )
    return dict(driver(head, address, code))


def wait_for(check: object, what: str, timeout_s: float, interval_s: float = 0.5) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")
