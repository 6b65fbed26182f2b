"""Benchmarks (not tests): ours vs peers, measured side by side in one run."""
