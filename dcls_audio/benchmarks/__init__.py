"""Benchmarks: model throughput, DCLS kernel and layer timings, data-path rates."""
