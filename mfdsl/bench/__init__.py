"""Measuring models: timing, memory, MFU and the side-by-side comparison with timm behind
``mfdsl bench`` and ``benchmarks/`` (:mod:`mfdsl.bench.throughput`)."""
