"""The Grafana dashboard's queries: every one parses as PromQL and names modelgate metrics.
(The live half, against a real scrape, is tests/integration/test_dashboard_live.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

DASHBOARD = Path(__file__).parent.parent / "configs" / "grafana" / "modelgate.json"
#: What Grafana puts in place of its variables before it sends a query.
GRAFANA = {"$__rate_interval": "1m", "$model": ".*", "$version": ".*"}


def panels() -> list[dict[str, Any]]:
    doc = json.loads(DASHBOARD.read_text())
    return [p for p in doc["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Grafana sends it) for every target of every panel."""
    out = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in a query."""
    stack: list[Any] = [promql_parser.parse(expr)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers
            yield node.name, {m.name for m in matchers if m.name != "__name__"}
            continue
        for attribute in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, str | int | float):
                stack.append(child)
        stack.extend(getattr(node, "args", None) or [])


def test_every_panel_queries_modelgate_metrics_in_valid_promql() -> None:
    found = panels()
    assert len(found) >= 12
    for panel in found:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    for title, expr in queries():
        names = {name for name, _ in selectors(expr)}  # raises on a syntax error
        assert names, (title, expr)
        assert all(n.startswith("modelgate_") for n in names), (title, names)


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    names = {name for _, expr in queries() for name, _ in selectors(expr)}
    for needed in (
        "modelgate_requests_total",  # req/s, error ratio
        "modelgate_request_duration_seconds_bucket",  # p50/p95/p99
        "modelgate_batch_rows_bucket",  # batch size
        "modelgate_queue_wait_seconds_bucket",  # queue wait ...
        "modelgate_compute_seconds_bucket",  # ... vs compute
        "modelgate_alias_info",  # canary vs stable
        "modelgate_shadow_rows_total",  # shadow agreement
        "modelgate_input_drift_psi",
    ):
        assert needed in names, needed
