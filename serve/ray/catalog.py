"""The catalog's Ray actor (its logic: serve/control/catalog.py): one per application, detached,
started by the routers and restarted by Ray, reading the catalog's config from Ray's KV (the
routers write it) so a restarted actor or a changed config needs nothing passed. It converts in
the control plane, never in a serving replica, and ends by itself once its application is gone.
"""

from __future__ import annotations

import json
import logging
import threading

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from serve.control.catalog import CatalogStore, CatalogSync, actor_name
from serve.control.delivery import GONE_PERIODS
from serve.core.config import GatewayConfig
from serve.ray.internals import KVDirectory, serve_details

logger = logging.getLogger("modelgate.catalog")

CONFIG_KEY = "config"


def ensure_catalog(app: str, config: GatewayConfig) -> None:
    """Publish the catalog's config and start the application's catalog actor unless it runs
    (a router calls it, off its event loop): on this node if it can, using no CPU of Ray's
    accounting."""
    store = CatalogStore(app, KVDirectory())
    fields = {"catalog", "registry", "artifacts", "distribute", "shared_artifacts"}
    text = config.model_dump_json(include=fields)
    if KVDirectory().get(store.prefix + CONFIG_KEY) != text:
        KVDirectory().publish(store.prefix + CONFIG_KEY, text)
    actor = ray.remote(CatalogActor).options(  # type: ignore[attr-defined]
        name=actor_name(app),
        namespace="modelgate",
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=True
        ),
    )
    actor.remote(app)


class CatalogActor:
    """A control period every `refresh_s` (the config's), in a thread."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.store = CatalogStore(app, KVDirectory())
        self._sync: CatalogSync | None = None
        self._config_text = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelgate-catalog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        missing, period = 0, 1.0
        while True:
            try:
                sync = self._current()
                if sync is not None:
                    assert sync.catalog is not None
                    period = sync.catalog.refresh_s
                    sync.tick()
                missing = 0 if self.app in serve_details().get("applications", {}) else missing + 1
            except Exception:  # the GCS restarting, or a registry down: try again next period
                logger.warning("catalog period failed", exc_info=True)
            if missing >= GONE_PERIODS:
                logger.info("application %s is gone: its catalog ends", self.app)
                self.store.clear()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
            # Requests (a repository load) are taken within a second whatever the period.
            for _ in range(max(1, round(period))):
                if self._stop.wait(1.0):
                    return
                if self.store.kv.listing(self.store.prefix + "requests/"):
                    break

    def _current(self) -> CatalogSync | None:
        text = KVDirectory().get(self.store.prefix + CONFIG_KEY) or ""
        if text != self._config_text:
            self._config_text = text
            self._sync = None
            if text:
                doc = json.loads(text)
                config = GatewayConfig.model_validate(doc)
                self._sync = CatalogSync(config, self.store)
        return self._sync
