"""Test helpers: builders of inputs, run directories and servers that several test modules use.

Test modules import from here (or from bench/ for data the benchmarks share: bench.synthetic,
bench.hf_tiny), never from one another.
"""
