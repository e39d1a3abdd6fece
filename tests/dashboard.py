"""The Grafana dashboard's queries, as Grafana sends them, and the selectors in each (shared by
tests/test_dashboard.py and tests/integration/test_dashboard_live.py)."""

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
