"""One scrape target per node: the sum of every modelgate process's metrics on that node.

Replicas (routers and model versions) run prometheus-client in multiprocess mode, all writing to
one node-local folder named by `PROMETHEUS_MULTIPROC_DIR`. Any of them can answer a scrape by
summing that folder:
- `GET /metrics` on the gateway's HTTP port: the node of the router replica that answered;
- the node exporter, `http://<node>:<metrics.port>/metrics`: every replica tries to bind the port
  on its node, the first one serves, the others retry every few seconds, so when the serving
  replica stops another takes over. This is the target to scrape on a multi-node cluster.
Counters and histograms of replicas that stopped stay in the sum (totals never go back); gauges
of dead processes are dropped at each scrape.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def prepare() -> None:
    """Create the node's metrics folder; call before the process creates any metric."""
    path = multiproc_dir()
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    global _value_class
    default = values.ValueClass
    if getattr(default, "_multiprocess", False) and default is not _value_class:
        # prometheus-client (multiprocess since import: the folder was in the environment)
        # checks the process id at every write to notice a fork(): one getpid() system call
        # per write, a dozen per request, each a chance to be descheduled holding the GIL on a
        # busy machine. The id is cached instead, renewed in a forked child. One class per
        # process: two would each map the process's files.
        _value_class = _value_class or values.MultiProcessValue(process_identifier=_cached_pid)
        values.ValueClass = _value_class


_value_class: Any = None
_pid = os.getpid()


def _cached_pid() -> int:
    return _pid


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


def forget_dead_processes(path: Path) -> None:
    """Drop live gauges (in-flight, drift) of processes that are gone."""
    for file in path.glob("gauge_live*_*.db"):
        with contextlib.suppress(ValueError):
            pid = int(file.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                multiprocess.mark_process_dead(pid, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _NodeCollector(Collector):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.inner = multiprocess.MultiProcessCollector(None, path=str(path))

    def collect(self) -> Iterable[Metric]:
        forget_dead_processes(self.path)
        return self.inner.collect()  # type: ignore[no-any-return]


def node_registry(local: CollectorRegistry) -> CollectorRegistry:
    """What a scrape shows: the node's sum in multiprocess mode, else this process's registry."""
    path = multiproc_dir()
    if path is None:
        return local
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(path))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def leave() -> None:
    """A process that stops drops its live gauges from the node's sums at once."""
    path = multiproc_dir()
    if path is not None:
        multiprocess.mark_process_dead(os.getpid(), str(path))


class NodeExporter:
    """Serves the node's metrics on `port` once this process wins the port (see module doc)."""

    def __init__(
        self, registry: CollectorRegistry, port: int, host: str, retry_s: float = 5.0
    ) -> None:
        self.registry, self.port, self.host, self.retry_s = registry, port, host, retry_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread = threading.Thread(target=self._claim, name="modelgate-exporter", daemon=True)

    def start(self) -> NodeExporter:
        self._thread.start()
        return self

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _claim(self) -> None:
        while not self._stop.is_set():
            try:
                server, _ = start_http_server(self.port, self.host, self.registry)
            except OSError:  # another process on this node serves it
                self._stop.wait(self.retry_s)
                continue
            with self._lock:
                if self._stop.is_set():  # closed while binding
                    _shut(server)
                else:
                    self._server = server
            return

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            if self._server is not None:
                _shut(self._server)
                self._server = None


def _shut(server: Any) -> None:
    # shutdown() waits for the serving thread to leave its loop. While the interpreter
    # finalizes (a replica's __del__ at exit), that daemon thread can no longer run, and the
    # wait would never end: closing the socket is all that is left to do.
    if not sys.is_finalizing():
        server.shutdown()
    server.server_close()
