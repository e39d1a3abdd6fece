"""Client-side helpers: sample requests built from a model's manifest (samples), used by the CLI's
smoke test and the load-test harness."""
