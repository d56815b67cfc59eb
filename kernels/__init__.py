"""Fused SPLADE-head kernels: a Triton kernel for CUDA, a PyTorch twin for CPU, one dispatcher.

`splade_max(hidden, weight, bias, mask)` is the entry point; `kernels.splade_triton` (which imports
triton) is loaded only when the Triton path runs.
"""

from kernels.checks import HEAD_DTYPES, check_head_inputs
from kernels.dispatch import BACKEND_ENV, BACKENDS, choose_backend, splade_max
from kernels.splade_cpu import splade_max_cpu, vocab_tile_for

__all__ = ["BACKENDS", "BACKEND_ENV", "HEAD_DTYPES", "check_head_inputs", "choose_backend",
           "splade_max", "splade_max_cpu", "vocab_tile_for"]
