"""Benchmark Flower app, runnable unchanged on stock Flower (``flwr run``) and on fedge."""
