"""The Grafana dashboard's queries: every one parses as PromQL and names modelgate metrics.
(The live half, against a real scrape, is tests/integration/test_dashboard_live.py.)"""

from __future__ import annotations

from tests.dashboard import panels, queries, selectors


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
        "modelgate_delivery_candidate_percent",  # progressive delivery's step
        "modelgate_delivery_phase",
        "modelgate_delivery_guardrail_value",
        "modelgate_delivery_decisions_total",
    ):
        assert needed in names, needed
