"""One entry point for the fused SPLADE head; picks the implementation by device.

CUDA tensors -> the Triton kernel; anything else -> the CPU twin. Override with the
`backend=` argument or the LSR_SPLADE_BACKEND environment variable ("auto", "triton",
"torch"); forcing "triton" on CPU tensors needs TRITON_INTERPRET=1 (for tests).
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from kernels.splade_cpu import splade_max_cpu

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
BACKEND_ENV = "LSR_SPLADE_BACKEND"


def choose_backend(device: torch.device, backend: str | None = None) -> str:
    """The implementation `splade_max` uses for tensors on `device`: "triton" or "torch"."""
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in BACKENDS:
        source = "backend" if backend else BACKEND_ENV
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return choice


def splade_max(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               mask: torch.Tensor, *, backend: Backend | None = None) -> torch.Tensor:
    """SPLADE weights (B, V) float32: log1p(relu(max over valid tokens of hidden @ weight.T + bias)).

    hidden (B, L, H) final hidden states (after the MLM transform), weight (V, H) the vocabulary
    projection, bias (V,) or None, mask (B, L) with 0 for padding. fp32, fp16 or bf16 inputs.
    """
    if choose_backend(hidden.device, backend) == "triton":
        from kernels.splade_triton import splade_max_triton  # triton imports lazily

        return splade_max_triton(hidden, weight, bias, mask)
    return splade_max_cpu(hidden, weight, bias, mask)
