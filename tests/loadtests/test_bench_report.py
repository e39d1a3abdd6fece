"""`make bench`'s report: ratios pair the scenarios of one round (no Ray: synthetic points)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from loadtests import bench


def _points(rps_by_round: list[float], p50_by_round: list[float]) -> dict[str, object]:
    rounds = [
        {"clients": 32, "rps": r, "p50_ms": p, "p99_ms": 2 * p, "errors": 0}
        for r, p in zip(rps_by_round, p50_by_round, strict=True)
    ]
    return bench.median_point(rounds)


def test_a_slow_spell_that_hits_both_sides_of_a_pair_leaves_the_ratio_alone() -> None:
    # Round 2 is a slow spell for both; the gateway is at 0.9x the baseline in every round.
    baseline = _points([2000, 1000, 1900], [10, 20, 11])
    gateway = _points([1800, 900, 1710], [11, 22, 12.1])
    assert bench.paired_ratio(gateway, baseline, "rps") == pytest.approx(0.9)
    assert bench.paired_ratio(gateway, baseline, "p50_ms") == pytest.approx(1.1)


def test_ratios_pair_rounds_instead_of_medians_from_different_rounds() -> None:
    baseline = _points([2000, 1000, 1900], [10, 20, 11])  # median round: the third
    gateway = _points([1700, 950, 1800], [12, 21, 11])  # median round: the first
    assert gateway["rps"] / baseline["rps"] == pytest.approx(1700 / 1900)  # across rounds
    # per round 0.85, 0.95, 0.947: the median pair
    assert bench.paired_ratio(gateway, baseline, "rps") == pytest.approx(1800 / 1900)


def test_points_with_one_round_fall_back_to_their_own_values() -> None:
    baseline = _points([2000, 1000, 1900], [10, 20, 11])
    plain = {"clients": 32, "rps": 19.0, "p50_ms": 1000.0}
    assert bench.paired_ratio(plain, baseline, "rps") == pytest.approx(0.01)


def test_the_report_shows_paired_ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "RESULTS.md")
    results = {}
    for name, factor in {s: 0.9 for s in bench.SCENARIOS}.items():
        points = []
        for clients in bench.CLIENTS:
            rounds = [1000.0, 500.0, 950.0]
            points.append(
                bench.median_point(
                    [
                        {
                            "clients": clients,
                            "rps": r * (1 if name.startswith("baseline") else factor),
                            "p50_ms": 10.0,
                            "p99_ms": 20.0,
                            "errors": 0,
                            "cpu_us": 1000.0 * (1 if name.startswith("baseline") else 1.05),
                        }
                        for r in rounds
                    ]
                )
            )
        results[name] = points
    text = bench.write_results(results, 4.0, 3, 8000.0)
    row = "| colocated | 32 | 855 | 10.00 | 20.00 | 0 | 1050 | baseline | 0.90× | 1.00× | 1.05× |"
    assert row in text
    assert "- colocated: 0.90× baseline req/s at 32 clients" in text
    # The floor is the baseline's handler in a router: the gateway is compared with it too.
    assert row.replace("colocated", "floor") in text
    assert "Router): 0.90× baseline req/s at 32 clients, p50 at 1 client 1.00×;" in text
    assert "against it, colocated 1.00× req/s at 32 clients, dedicated 1.00×" in text
    assert (
        "- CPU a request at 32 clients (the whole machine), vs baseline: floor 1.05×, "
        "colocated 1.05×, dedicated 1.05×; colocated vs floor 1.00×"
    ) in text


def test_a_round_without_a_cpu_figure_is_left_out_of_the_cpu_ratio() -> None:
    baseline = bench.median_point(
        [{"clients": 32, "rps": 1000.0, "p50_ms": 1.0, "cpu_us": c} for c in (1000.0, 900.0)]
    )
    gateway = bench.median_point(
        [{"clients": 32, "rps": 900.0, "p50_ms": 1.0, "cpu_us": c} for c in (None, 990.0)]
    )
    assert bench.paired_ratio(gateway, baseline, "cpu_us") == pytest.approx(1.1)
    assert bench.paired_ratio({"cpu_us": None}, {"cpu_us": 900.0}, "cpu_us") is None


def test_the_machine_busy_time_counts_this_process_work_in_seconds() -> None:
    busy, mine, wall = bench.machine_busy_s(), time.process_time(), time.monotonic()
    while time.process_time() - mine < 0.3:
        pass
    spent, elapsed = time.process_time() - mine, time.monotonic() - wall
    machine = bench.machine_busy_s() - busy
    # It includes this process's work (the kernel samples it per tick, and a VM's stolen time
    # is left out: half is a safe floor), and in seconds: no more than every core all along.
    assert spent / 2 <= machine <= elapsed * (os.cpu_count() or 1) + 0.05


def test_a_target_point_with_more_rounds_pairs_the_rounds_both_have() -> None:
    colocated = _points([1000, 900, 1100, 950, 1050], [1, 1, 1, 1, 1])  # a target point
    binary = _points([800, 720, 880], [1, 1, 1])  # 0.8x in each of the three shared rounds
    assert bench.paired_ratio(binary, colocated, "rps") == pytest.approx(0.8)


def test_each_round_measures_every_scenario_once_in_an_order_of_its_own() -> None:
    names = ["baseline", "dedicated", "colocated", "handle", "grpc"]
    orders = [bench.round_order(names, 32, i) for i in range(9)]
    assert all(sorted(order) == sorted(names) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # not one fixed order
    assert len({order[0] for order in orders}) > 1  # no scenario always first
    # The same in every run, so two runs of `make bench` measure alike.
    assert orders == [bench.round_order(names, 32, i) for i in range(9)]
    assert names[0] == "baseline" and names[-1] == "grpc"  # the caller's list is left as it was


def test_a_partial_run_measures_what_each_named_scenario_compares_with() -> None:
    assert bench.chosen(["grpc"]) == ["grpc", "baseline-grpc"]
    assert bench.chosen(["dedicated", "unbatched"]) == [
        "baseline",
        "dedicated",
        "colocated",
        "unbatched",
    ]
    # and what that compares with: autoscaled against dedicated-2, itself against the baseline
    assert bench.chosen(["autoscaled"]) == ["baseline", "dedicated-2", "autoscaled"]
    with pytest.raises(SystemExit, match="unknown scenarios: nope"):
        bench.chosen(["grpc", "nope"])


def test_the_report_keeps_the_notes_sections_and_adds_the_many_models_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make bench` rewrites RESULTS.md whole: what earlier work measured lives in NOTES.md and
    comes back; the catalog's figures of this run are added."""
    from loadtests import catalog

    monkeypatch.setattr(bench, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(bench, "summary", lambda by: ["(the summary)"])  # tested above
    point = {"clients": 1, "rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}
    figures = {
        "models": 200,
        "budget": 16,
        "warm_p50_ms": 1.0,
        "warm_p99_ms": 3.0,
        "cold_p50_ms": 5.0,
        "cold_p99_ms": 9.0,
        "rss_per_model_mb": 0.4,
        "router_rss_mb": 250.0,
        "change_to_answer_s": [0.5, 1.0, 1.0],
        "fits": {"rps": 1000.0, "cpu_us": 1500.0},
        "beyond": {"rps": 300.0, "cpu_us": 4500.0},
        "pool": 4,
        "pool_resident": 24,
        "pooled": {"rps": 800.0, "cpu_us": 2000.0},
    }
    text = bench.write_results(
        {"baseline": [point]}, 4.0, 3, 8000.0, catalog=catalog.lines(figures)
    )
    assert "## Many models, this run" in text
    assert (
        "| cold p50 / p99 (each request's model evicted) | 5.00 / 9.00 ms (5.0× / 3.0× warm) |"
        in text
    )
    assert "300 req/s (0.30×), 4500 µs CPU a request (3.00×)" in text
    assert "pool` of 4 replicas × 24 (it fits the pool) | 800 req/s (0.80×), 2000 µs" in text
    for section in ("## The structure step (issue 17)", "## Progressive delivery (issue 20)"):
        assert section in text
