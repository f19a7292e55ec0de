"""Benchmarks: each runs our JAX path and the PyTorch way of doing the same work, in one process."""
