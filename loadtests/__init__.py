"""Load-test harness and benchmarks (see loadtests/RESULTS.md)."""
