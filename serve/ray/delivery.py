"""The delivery controller's Ray actor (its logic: serve/control/delivery.py): one per
application, detached, started by the routers and restarted by Ray; it ends by itself once its
application is gone."""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from converters.registry import open_registry
from serve.control.delivery import (
    GONE_PERIODS,
    INTERVAL_S,
    Controller,
    Store,
    actor_name,
    jsonl,
)
from serve.control.follow import Follower, FollowStore
from serve.observe import exporter, scrape
from serve.observe.metrics import DeliveryMetrics
from serve.ray.internals import KVDirectory, rebuild_app, serve_details, session_dir

logger = logging.getLogger("modelgate.delivery")


def ensure_detached(actor: type, name: str, *args: Any, env: dict[str, str] | None = None) -> None:
    """Start an application's control actor (`name`, in the modelgate namespace) unless it
    runs: detached, on this node if it can, using no CPU of Ray's accounting, restarted by Ray
    if it dies. A router calls it off its event loop. `env`: its environment variables."""
    options: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env is not None else {}
    ray.remote(actor).options(  # type: ignore[attr-defined]
        name=name,
        namespace="modelgate",
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=True
        ),
        **options,
    ).remote(*args)


def ensure_controller(app: str, host: str, port: int, env: dict[str, str]) -> None:
    """Start the application's delivery controller unless it runs (whenever a router's routing
    holds a delivery). `env`: the replicas' environment (the node's metrics folder)."""
    ensure_detached(DeliveryActor, actor_name(app), app, host, port, env=env)


class DeliveryActor:
    """The Ray actor around Controller: a control period a second, in a thread."""

    def __init__(self, app: str, host: str, port: int) -> None:
        exporter.prepare()
        self.app = app
        self._serve_details = serve_details
        log = Path(session_dir()) / f"modelgate-delivery-{app}.jsonl"

        def urls() -> list[str]:
            nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
            return scrape.exporter_urls(host, port, nodes)

        self.store = Store(app, KVDirectory())
        follower = Follower(
            FollowStore(KVDirectory()),
            functools.cache(open_registry),
            lambda revision: rebuild_app(app, revision),
        )
        self.controller = Controller(
            self.store, urls, log=jsonl(log), metrics=DeliveryMetrics(), follower=follower
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelgate-delivery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        missing = 0
        while not self._stop.wait(INTERVAL_S):
            try:
                self.controller.tick(time.time(), time.monotonic())
                missing = 0 if self._app_exists() else missing + 1
            except Exception:  # the GCS restarting, say: try again next period
                logger.warning("delivery control period failed", exc_info=True)
            if missing >= GONE_PERIODS:
                self._end()
                return

    def _app_exists(self) -> bool:
        return self.app in self._serve_details().get("applications", {})

    def _end(self) -> None:
        """The application is gone: so are its deliveries, and this actor."""
        logger.info("application %s is gone: the delivery controller ends", self.app)
        self.store.clear()
        exporter.leave()
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def connect(app: str, address: str) -> Store:
    """The deliveries' store of a running cluster's application (the CLI's way in)."""
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    return Store(app, KVDirectory())
