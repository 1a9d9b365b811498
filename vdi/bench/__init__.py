"""Benchmarks behind `vdi bench …` (vdi/cli/bench.py): each prints JSON. Never run as timed tests."""
