"""Fused SPLADE-head kernels: a Triton kernel for CUDA, a PyTorch twin for CPU, one dispatcher.

`splade_max(hidden, weight, bias, mask, activation=...)` is the entry point (`splade_head` adds
sum pooling); `lsr_kernels.splade_triton` (which imports
triton) is loaded only when the Triton path runs.
"""

from lsr_kernels.checks import ACTIVATIONS, HEAD_DTYPES, POOLINGS, check_head_inputs
from lsr_kernels.dispatch import BACKEND_ENV, BACKENDS, choose_backend, splade_head, splade_max
from lsr_kernels.splade_cpu import splade_max_cpu, splade_sum_cpu, vocab_tile_for

__all__ = ["ACTIVATIONS", "BACKENDS", "BACKEND_ENV", "HEAD_DTYPES", "POOLINGS", "check_head_inputs",
           "choose_backend", "splade_head", "splade_max", "splade_max_cpu", "splade_sum_cpu", "vocab_tile_for"]
