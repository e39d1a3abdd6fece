"""Load-test and plan reports: JSON (versioned schema), a markdown summary, PNG plots."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests.engine import StepResult

LOADTEST_SCHEMA = "modelgate.loadtest/v1"
PLAN_SCHEMA = "modelgate.plan/v1"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def step_row(result: StepResult) -> dict[str, Any]:
    return {"step": asdict(result.step), **result.summary()}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per step."""
    lines = [
        "| mode | clients (closed) or in-flight cap (open) | offered req/s | achieved req/s "
        "| p50 ms | p90 | p99 | p99.9 | max | errors | late |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = r["latency_ms"]
        offered = "" if r["offered_rps"] is None else f"{r['offered_rps']:.0f}"
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {offered} | {r['achieved_rps']:.0f} "
            f"| {_ms(lat['p50'])} | {_ms(lat['p90'])} | {_ms(lat['p99'])} | {_ms(lat['p99.9'])} "
            f"| {_ms(lat['max'])} | {errors} | {r['late']} |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def plot_latency_vs_throughput(
    path: Path, series: dict[str, list[dict[str, Any]]], slo_p99_ms: float | None
) -> None:
    """p50 and p99 against achieved req/s, one pair of lines per series; the SLO as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["achieved_rps"])
        x = [r["achieved_rps"] for r in rows]
        for p, style in (("p50", "o--"), ("p99", "o-")):
            ax.plot(x, [r["latency_ms"][p] for r in rows], style, label=f"{name} {p}")
    if slo_p99_ms is not None:
        ax.axhline(slo_p99_ms, color="red", linestyle=":", label=f"SLO p99 {slo_p99_ms:g} ms")
    ax.set_xlabel("achieved requests per second")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput_vs_concurrency(path: Path, series: dict[str, list[dict[str, Any]]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["concurrency"])
        ax.plot(
            [r["concurrency"] for r in rows], [r["achieved_rps"] for r in rows], "o-", label=name
        )
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("achieved requests per second")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
