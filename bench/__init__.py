"""Benchmarks comparing fedge with stock Flower (importable so fedge can load ``bench.flower_app``)."""
