"""Benchmarks for Backsync (`python -m bench.ingest`)."""
