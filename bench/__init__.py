"""Benchmarks: `python -m bench.run` (all) or `python -m bench.run <name>`; see bench/README.md."""
