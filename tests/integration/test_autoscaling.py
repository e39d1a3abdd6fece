"""A dedicated version configured min 1 / max 3 replicas scales up under sustained load and back
to one when the load falls, on the direct transport: its routers' demand reaches Ray Serve
through the replicas (serve/ray/autoscale.py). The model is slow on purpose (one row a batch,
a few milliseconds of one core each), so that a replica is the bottleneck and three replicas on
this machine's two cores can answer more than one.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests
from ray import serve
from sklearn.datasets import load_breast_cancer

from serve.ray import launcher
from tests.integration.conftest import (
    Gateway,
    deploy_beside,
    replica_pids,
    restore,
    settle_metrics,
)
from tests.integration.slow_model import slow_artifact

APP, PREFIX, DEPLOYMENT = "scaling", "/scaling", "slow-v1"
ROWS = load_breast_cancer(return_X_y=True)[0][:16].astype(np.float32)
#: Held requests a replica is sized for; 12 clients ask for 6 replicas, capped at 3; one
#: client for 1.
TARGET = 2
HEAVY, LIGHT = 11, 1
#: Seconds Ray waits, deciding more replicas every control period, before it adds them: the
#: window in which the load runs on one replica (measured from the second after it starts).
#: Long against a second's dip (a batch delayed by other work on two cores moved an 8 s
#: window's rate by a third on one CI run).
UPSCALE_DELAY_S = 12
#: Seconds measured at three replicas.
THREE_S = 14
#: Three replicas share two cores with the router, HAProxy and the clients, so the gain is
#: bounded: 1.29-1.93x measured; more than 1.1x is a gain no dip explains.
MARGIN = 1.1
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": TARGET,
    "upscale_delay_s": UPSCALE_DELAY_S,
    "downscale_delay_s": 3,
    "metrics_interval_s": 0.5,
    "look_back_period_s": 1,
}


@pytest.fixture(scope="module")
def scaling(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    folder = tmp_path_factory.mktemp("scaling")
    app = {
        "name": APP,
        "route_prefix": PREFIX,
        "import_path": "serve.app:build_app",
        "args": {
            "models": [
                {
                    "name": "slow",
                    "versions": [
                        {
                            "artifact": str(slow_artifact(folder, layers=600)),
                            "batching": {"max_batch_rows": 1, "max_in_flight": 1},
                            "autoscaling": AUTOSCALING,
                        }
                    ],
                }
            ]
        },
    }
    deploy_beside(gateway, app)
    try:
        yield
    finally:
        restore(gateway)


def _running(app: str = APP, deployment: str = DEPLOYMENT) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


class Replicas:
    """The version's running replica count, sampled in a thread: (monotonic time, count)."""

    def __init__(self, app: str = APP, deployment: str = DEPLOYMENT) -> None:
        self.app, self.deployment = app, deployment
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Replicas:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), _running(self.app, self.deployment)))
            self.stop.wait(0.5)

    def counts(self, start: float, end: float) -> set[int]:
        """Every count seen from `start` to `end` (and the last one seen before `start`)."""
        before = [n for t, n in self.samples if t <= start][-1:]
        return set(before) | {n for t, n in self.samples if start < t <= end}

    def wait_for(self, count: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][1] == count:
                return self.samples[-1][0]
            time.sleep(0.2)
        raise AssertionError(f"{self.deployment} did not reach {count}: {self.samples[-5:]}")


class Load:
    """Closed-loop HTTP clients, one row a request; every answer's time is recorded, and every
    outcome that is not a 200 too."""

    def __init__(self, url: str, clients: int, pause_s: float = 0.0) -> None:
        self.url, self.clients, self.pause_s = url, clients, pause_s
        self.answered: list[float] = []  # monotonic times of 200s, in order
        self.failures: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(40)
        assert not self.thread.is_alive(), "a client never got its answer"

    async def _main(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        i = index
        while not self.stop.is_set():
            row = ROWS[i % len(ROWS)].tolist()
            i += self.clients
            body = {
                "inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]
            }
            try:
                async with session.post(self.url, json=body) as response:
                    await response.read()
                    if response.status == 200:
                        self.answered.append(time.monotonic())
                    else:
                        self.failures[f"http_{response.status}"] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.failures[type(exc).__name__] += 1
            if self.pause_s:
                await asyncio.sleep(self.pause_s)

    def rate(self, start: float, end: float) -> float:
        """Answers a second from `start` to `end`."""
        count = bisect.bisect_right(self.answered, end) - bisect.bisect_right(self.answered, start)
        return count / (end - start)


def _direct_batches(gateway: Gateway) -> dict[str, float]:
    """Batches each replica of the version answered over the direct transport, and the
    batches the routers sent it by the handle."""
    from prometheus_client.parser import text_string_to_metric_families

    settle_metrics()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(requests.get(gateway.metrics, timeout=10).text):
        for sample in family.samples:
            if sample.labels.get("model") != "slow":
                continue
            if sample.name == "modelgate_direct_batches_total":
                found[sample.labels["replica"]] = sample.value
            elif sample.name == "modelgate_transport_batches_total":
                found[f"transport:{sample.labels['transport']}"] = sample.value
    return found


def _each_replica_answers(gateway: Gateway, replicas: int, timeout_s: float) -> None:
    before = _direct_batches(gateway)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = _direct_batches(gateway)
        grew = [k for k in now if not k.startswith("transport:") and now[k] > before.get(k, 0)]
        if len(grew) >= replicas:  # replicas gone stay listed
            return
        time.sleep(0.5)
    raise AssertionError(f"not every replica answered: {before} then {now}")


def _warm(url: str, gateway: Gateway) -> dict[str, float]:
    """Once the router sends the version's batches over the direct transport (it learns the
    replica's endpoint within a refresh of its start), the batches counted so far."""
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROWS[0].tolist()}
        ]
    }
    deadline = time.monotonic() + 30
    while True:
        assert requests.post(url, json=body, timeout=10).status_code == 200
        counted = _direct_batches(gateway)
        if counted.get("transport:direct", 0) > 0:
            return counted
        assert time.monotonic() < deadline, f"no batch went direct: {counted}"


def test_scales_to_three_on_the_direct_transport_answers_more_and_back_to_one(
    gateway: Gateway, scaling: None
) -> None:
    url = f"{gateway.base}{PREFIX}/v2/models/slow/infer"
    assert _running() == 1
    before = _warm(url, gateway)
    with Replicas() as replicas, Load(url, LIGHT) as light:
        with Load(url, HEAVY) as heavy:
            started = time.monotonic()
            # At one replica: from the second after the load starts until Ray may add one.
            one = (started + 1, started + UPSCALE_DELAY_S - 1)
            time.sleep(one[1] - time.monotonic())
            assert replicas.counts(*one) == {1}
            replicas.wait_for(3, timeout_s=120)
            _each_replica_answers(gateway, replicas=3, timeout_s=30)
            scaled = _direct_batches(gateway)  # (settles the metrics: a second or two)
            three = (time.monotonic() + 1, time.monotonic() + 1 + THREE_S)
            time.sleep(three[1] - time.monotonic() + 0.1)
            assert replicas.counts(*three) == {3}
        rate_one = light.rate(*one) + heavy.rate(*one)
        rate_three = light.rate(*three) + heavy.rate(*three)
        # the light client alone asks for one replica: Ray takes the others away under it
        replicas.wait_for(1, timeout_s=60)
        time.sleep(1)
    after = _direct_batches(gateway)
    seconds = [
        f"{light.rate(t, t + 1) + heavy.rate(t, t + 1):.0f}"
        for t in range(int(started), int(three[1]))
    ]
    print(f"one replica {rate_one:.0f}/s, three {rate_three:.0f}/s; each second: {seconds}")
    assert heavy.failures == light.failures == Counter()
    assert rate_three > MARGIN * rate_one, (rate_one, rate_three, seconds)
    # every batch took the direct transport, through both transitions
    for then, now in ((before, scaled), (scaled, after)):
        assert now["transport:direct"] > then["transport:direct"]
        assert now.get("transport:handle", 0) == then.get("transport:handle", 0), (then, now)


ROUTER_APP, ROUTER_PREFIX = "routerscale", "/routerscale"
#: 12 clients keep the router's process at 0.6 core or more here (HAProxy, the clients and
#: Ray take the rest of two cores): two replicas; one client that pauses 50 ms between
#: requests, a few hundredths: one.
TARGET_BUSY = 0.3


def _cpu_ticks(pid: int) -> int:
    """CPU time a process has used (clock ticks); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_the_router_scales_on_the_cpu_it_uses_through_haproxy_and_back(
    gateway: Gateway,
) -> None:
    """A router (ingress, holding a colocated version) scales on its own load under the HAProxy
    ingress: the CPU its replicas use (serve/ray/autoscale.py; Ray's own count of ongoing
    requests reads 0 for a router that answers without yielding), and each router replica then
    takes requests from HAProxy."""
    resolved = launcher.preflight(gateway.config)["gateway"]
    artifact = next(a for m, _, a, v, _ in resolved if m.name == "breast_cancer" and v == "1")
    app = {
        "name": ROUTER_APP,
        "route_prefix": ROUTER_PREFIX,
        "import_path": "serve.app:build_app",
        "args": {
            "router": {
                "autoscaling": {**AUTOSCALING, "max_replicas": 2, "upscale_delay_s": 0.5},
                "target_busy": TARGET_BUSY,
            },
            "models": [
                {"name": "rs", "versions": [{"artifact": str(artifact), "placement": "colocated"}]}
            ],
        },
    }
    deploy_beside(gateway, app)
    url = f"{gateway.base}{ROUTER_PREFIX}/v2/models/rs/infer"
    try:
        assert _running(ROUTER_APP, "Router") == 1
        with Replicas(ROUTER_APP, "Router") as routers, Load(url, LIGHT, 0.05) as light:
            with Load(url, HEAVY) as heavy:
                routers.wait_for(2, timeout_s=90)
                # both router replicas take requests from HAProxy once the second is ready
                deadline = time.monotonic() + 30
                while True:
                    pids = replica_pids(ROUTER_APP, "Router")
                    before = {pid: _cpu_ticks(pid) for pid in pids}
                    time.sleep(2)
                    busy = [pid for pid in pids if _cpu_ticks(pid) - before[pid] >= 20]
                    if len(busy) == 2:
                        break
                    assert time.monotonic() < deadline, f"not both busy: {before}"
            routers.wait_for(1, timeout_s=60)  # the light client alone keeps little busy
            time.sleep(1)
        assert heavy.failures == light.failures == Counter()
        assert len(heavy.answered) > 0 and len(light.answered) > 0
    finally:
        restore(gateway)
