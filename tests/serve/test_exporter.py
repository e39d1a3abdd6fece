"""Node-level metrics: real processes write to one folder; a scrape shows their sum (no Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.observe import exporter
from serve.observe.metrics import GatewayMetrics
from tests.conftest import free_port

#: A replica stand-in: counts `n` requests, holds one in flight, and waits until stdin closes.
WORKER = """
import sys
from serve.observe import exporter
from serve.observe.metrics import GatewayMetrics
exporter.prepare()
m = GatewayMetrics()
n = int(sys.argv[1])
for _ in range(n):
    m.requests.labels("m", "1", "http", "ok").inc()
    m.request_duration.labels("m", "1", "http").observe(0.001)
m.in_flight.labels("m").inc()
print("ready", flush=True)
sys.stdin.read()
"""


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _worker(folder: Path, n: int) -> subprocess.Popen[str]:
    env = {**os.environ, exporter.MULTIPROC_ENV: str(folder)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(n)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metrics"
    monkeypatch.setenv(exporter.MULTIPROC_ENV, str(path))
    exporter.prepare()
    return path


def test_a_scrape_sums_every_process_and_keeps_totals_of_stopped_ones(folder: Path) -> None:
    workers = [_worker(folder, n) for n in (3, 4, 5)]
    try:
        registry = exporter.node_registry(GatewayMetrics().registry)
        text = exporter.exposition(registry).decode()
        ok = {"model": "m", "version": "1", "protocol": "http", "code": "ok"}
        assert _value(text, "modelgate_requests_total", **ok) == 12
        duration = {"model": "m", "version": "1", "protocol": "http"}
        assert _value(text, "modelgate_request_duration_seconds_count", **duration) == 12
        assert _value(text, "modelgate_requests_in_flight", model="m") == 3

        workers[0].communicate("")  # one replica stops
        text = exporter.exposition(registry).decode()
        assert _value(text, "modelgate_requests_total", **ok) == 12  # its count stays
        assert _value(text, "modelgate_requests_in_flight", model="m") == 2  # its gauge goes
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.communicate("")


def test_one_process_per_node_serves_the_port_and_another_takes_over(folder: Path) -> None:
    port = free_port()
    worker = _worker(folder, 7)
    first, second = (
        exporter.NodeExporter(
            exporter.node_registry(GatewayMetrics().registry), port, "127.0.0.1", retry_s=0.1
        )
        for _ in range(2)
    )
    try:
        first.start()
        _until(lambda: first.serving)
        second.start()
        time.sleep(0.3)
        assert not second.serving  # the port is taken
        url = f"http://127.0.0.1:{port}/metrics"
        ok = {"model": "m", "version": "1", "protocol": "http", "code": "ok"}
        assert _value(_scrape(url), "modelgate_requests_total", **ok) == 7
        first.close()
        _until(lambda: second.serving)
        assert _value(_scrape(url), "modelgate_requests_total", **ok) == 7
    finally:
        first.close()
        second.close()
        worker.communicate("")


def test_without_a_folder_a_scrape_is_the_process_own_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(exporter.MULTIPROC_ENV, raising=False)
    metrics = GatewayMetrics()
    metrics.shed.labels("m", "1").inc(2)
    text = exporter.exposition(exporter.node_registry(metrics.registry)).decode()
    assert _value(text, "modelgate_shed_total", model="m", version="1") == 2


#: Counts getpid() calls while writing metrics, then forks: the child's writes go to its own file.
FORKING = """
import os, sys
from serve.observe import exporter
from serve.observe.metrics import GatewayMetrics
exporter.prepare()
m = GatewayMetrics()
calls = 0
real = os.getpid
def counting():
    global calls
    calls += 1
    return real()
os.getpid = counting
for _ in range(100):
    m.requests.labels("m", "1", "http", "ok").inc()
os.getpid = real
print("getpid calls", calls, flush=True)
child = os.fork()
if child == 0:
    m.requests.labels("m", "1", "http", "ok").inc(5)
    os._exit(0)
os.waitpid(child, 0)
print("parent", os.getpid(), "child", child, flush=True)
"""


def test_metric_writes_make_no_system_call_and_a_forked_child_writes_its_own_file(
    folder: Path,
) -> None:
    env = {**os.environ, exporter.MULTIPROC_ENV: str(folder)}
    done = subprocess.run(
        [sys.executable, "-c", FORKING], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "getpid calls 0"
    parent, child = lines[1].split()[1::2]
    assert sorted(f.name for f in folder.iterdir()) == sorted(
        [f"counter_{parent}.db", f"counter_{child}.db"]
    )
    registry = exporter.node_registry(GatewayMetrics().registry)
    text = exporter.exposition(registry).decode()
    ok = {"model": "m", "version": "1", "protocol": "http", "code": "ok"}
    assert _value(text, "modelgate_requests_total", **ok) == 105


#: A replica whose exporter serves and is closed by its `__del__` as the interpreter exits
#: (Ray Serve calls `__del__` on a stopping replica; so does the garbage collector at exit).
CLOSED_AT_EXIT = """
import sys, time
from serve.observe import exporter
from serve.observe.metrics import GatewayMetrics
class Replica:
    def __init__(self, port):
        registry = exporter.node_registry(GatewayMetrics().registry)
        self.exporter = exporter.NodeExporter(registry, port, "127.0.0.1").start()
        while not self.exporter.serving:
            time.sleep(0.01)
    def __del__(self):
        self.exporter.close()
replica = Replica(int(sys.argv[1]))
print("serving", flush=True)
"""


def test_an_exporter_closed_while_the_interpreter_exits_lets_it_exit(folder: Path) -> None:
    """Its serving thread cannot run any more then; waiting for it to stop hung forever."""
    env = {**os.environ, exporter.MULTIPROC_ENV: str(folder)}
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_AT_EXIT, str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "serving\n"), done.stderr


def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
