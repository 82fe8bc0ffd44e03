"""Latency and cost benchmarks (`interlcm-bench`); see README.md in this folder."""
