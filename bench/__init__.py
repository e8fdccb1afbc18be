"""Benchmarks (pytest-benchmark) and the node simulator ``perceus-sim``."""
