"""Helpers for tests and benchmarks, never imported by the library: the calibrated synthetic
SPLADE-like generator, a direct generation writer (no Ray), and the machine description that
every benchmark prints."""
