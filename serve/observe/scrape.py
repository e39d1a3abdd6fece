"""Reading the cluster's totals without a Prometheus: every node's exporter
(serve/observe/exporter.py), scraped over HTTP, and the few series a delivery judges taken out
of the text (serve/core/delivery.py's Snapshot)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from serve.core.delivery import Snapshot

#: Wildcard binds: the exporter answers on each node's own address.
ANYWHERE = ("0.0.0.0", "::", "")


class ScrapeError(Exception):
    """A node's exporter answered, but not with metrics; or did not answer in time."""


def exporter_urls(host: str, port: int, node_addresses: Iterable[str]) -> list[str]:
    """Every node's exporter: on each node's address when it binds every interface, else the
    one address it binds (one node)."""
    if host in ANYWHERE:
        return [f"http://{_host(a)}:{port}/metrics" for a in sorted(set(node_addresses))]
    return [f"http://{_host(host)}:{port}/metrics"]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def fetch(url: str, timeout_s: float = 2.0) -> str | None:
    """The exposition text; None when nothing listens there (a node without gateway replicas
    runs no exporter). ScrapeError when it listens but does not answer properly."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bytes(response.read()).decode()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        raise ScrapeError(f"{url}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise ScrapeError(f"{url}: {exc}") from exc


#: What a delivery reads, by the sample's name: (snapshot key maker).
_REQUESTS = "modelgate_requests_total"
_LATENCY = "modelgate_request_duration_seconds_bucket"
_SHADOW = "modelgate_shadow_requests_total"
_AGREE = "modelgate_shadow_rows_total"
_DIFF = "modelgate_shadow_max_abs_diff_bucket"
_DRIFT = "modelgate_input_drift_psi"


def snapshots(text: str, pairs: dict[str, tuple[str, str]]) -> dict[str, Snapshot]:
    """For each model named in `pairs` (model -> (stable, candidate)), its delivery's series in
    one node's exposition, summed over protocols and replicas."""
    out: dict[str, Snapshot] = {model: {} for model in pairs}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            model = labels.get("model")
            if model not in pairs:
                continue
            key = _key(sample.name, labels, pairs[model])
            if key is None:
                continue
            snap = out[model]
            if key[0] == "drift":
                snap[key] = max(snap.get(key, 0.0), sample.value)
            else:
                snap[key] = snap.get(key, 0.0) + sample.value
    return out


def _key(name: str, labels: dict[str, str], pair: tuple[str, str]) -> tuple[str, ...] | None:
    stable, candidate = pair
    version = labels.get("version")
    if name == _REQUESTS and version in pair:
        return ("req", version, labels["code"])
    if name == _LATENCY and version in pair:
        return ("lat", version, labels["le"])
    if name == _DRIFT and version in pair:
        return ("drift", version)
    if labels.get("primary") != stable or labels.get("shadow") != candidate:
        return None
    if name == _SHADOW:
        return ("shadow", labels["outcome"])
    if name == _AGREE:
        return ("agree", labels["agree"])
    if name == _DIFF:
        return ("diff", labels["le"])
    return None
