"""Entry points for the SPLADE head; `splade_max` picks the implementation by device.

`splade_head` adds the pooling choice: max pooling goes through `splade_max` (the fused kernel
on CUDA, the twin elsewhere), sum pooling through the vocabulary-tiled `splade_sum_cpu` (plain
PyTorch, any device).

CUDA tensors -> the Triton kernel; anything else -> the CPU twin. Override with the
`backend=` argument or the LSR_SPLADE_BACKEND environment variable ("auto", "triton",
"torch"); forcing "triton" on CPU tensors needs TRITON_INTERPRET=1 (for tests).
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from lsr_kernels.checks import check_activation, check_pooling
from lsr_kernels.splade_cpu import splade_max_cpu, splade_sum_cpu

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
               mask: torch.Tensor, *, backend: Backend | None = None, activation: str = "relu") -> torch.Tensor:
    """SPLADE weights (B, V) float32: act(max over valid tokens of hidden @ weight.T + bias).

    hidden (B, L, H) final hidden states (after the MLM transform), weight (V, H) the vocabulary
    projection, bias (V,) or None, mask (B, L) with 0 for padding. fp32, fp16 or bf16 inputs.
    `activation` "relu": act = log1p(relu(.)); "log1p_relu": act = log1p(log1p(relu(.))).
    """
    check_activation(activation)
    if choose_backend(hidden.device, backend) == "triton":
        from lsr_kernels.splade_triton import splade_max_triton  # triton imports lazily

        return splade_max_triton(hidden, weight, bias, mask, activation=activation)
    return splade_max_cpu(hidden, weight, bias, mask, activation=activation)


def splade_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor, *,
                pooling: str = "max", activation: str = "relu", backend: Backend | None = None) -> torch.Tensor:
    """SPLADE weights (B, V) float32 with SpladePooling's choices: `pooling` "max" or "sum" over the
    valid tokens of act(logits), `activation` "relu" or "log1p_relu" (see `splade_max`)."""
    if check_pooling(pooling) == "max":
        return splade_max(hidden, weight, bias, mask, backend=backend, activation=activation)
    return splade_sum_cpu(hidden, weight, bias, mask, activation=activation)
