"""Input contract shared by every implementation of the fused SPLADE head.

All backends compute, for hidden states `hidden` (B, L, H), the vocabulary projection
`weight` (V, H) and `bias` (V,), and the attention mask (B, L):

    out[b, v] = act(max_{l : mask[b, l] != 0} (hidden[b, l] . weight[v] + bias[v]))

as float32 (B, V); a row with no valid token is all zeros. The activation `act` is named as
sentence-transformers' SpladePooling names it:

    "relu"        act(x) = log1p(relu(x))            (naver/splade, SPLADE v2/v3)
    "log1p_relu"  act(x) = log1p(log1p(relu(x)))     (OpenSearch doc-only models)

This equals the plain expression `max_l(act(logits) * mask)` for binary masks, because both
activations are monotone (the max can be taken on raw logits and the activation applied once).
Sum pooling (`sum_l act(logits)`) has no such shortcut; `lsr_kernels.splade_cpu.splade_sum_cpu`
computes it vocabulary tile by vocabulary tile.
"""

from __future__ import annotations

import torch

#: Activations of the head (sentence-transformers' SpladePooling `activation_function`).
ACTIVATIONS: tuple[str, ...] = ("relu", "log1p_relu")
#: Pooling over tokens (SpladePooling `pooling_strategy`).
POOLINGS: tuple[str, ...] = ("max", "sum")

#: Floating dtypes the head accepts for `hidden` and `weight` (accumulation is always float32).
HEAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_head_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate shapes, dtypes and devices; return (B, L, V, H). Raises ValueError naming the argument."""
    for name, t in (("hidden", hidden), ("weight", weight), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, L, H), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, H), got shape {tuple(weight.shape)}")
    n_rows, seq_len, n_hidden = hidden.shape
    vocab_size = weight.shape[0]
    if weight.shape[1] != n_hidden:
        raise ValueError(f"weight is (V, H) = {tuple(weight.shape)} but hidden has H = {n_hidden}")
    if hidden.dtype not in HEAD_DTYPES:
        raise ValueError(f"hidden dtype {hidden.dtype} not supported; use one of {HEAD_DTYPES}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if tuple(mask.shape) != (n_rows, seq_len):
        raise ValueError(f"mask must be (B, L) = {(n_rows, seq_len)}, got {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"mask must be a bool or integer tensor (0 = padding), got {mask.dtype}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise ValueError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if tuple(bias.shape) != (vocab_size,):
            raise ValueError(f"bias must be (V,) = ({vocab_size},), got {tuple(bias.shape)}")
        if not bias.dtype.is_floating_point:
            raise ValueError(f"bias must be floating point, got {bias.dtype}")
    devices = {t.device for t in (hidden, weight, mask) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"hidden, weight, bias and mask must be on one device, got {sorted(map(str, devices))}")
    return n_rows, seq_len, vocab_size, n_hidden


def check_activation(activation: str) -> str:
    """`activation` if it is one of ACTIVATIONS, else ValueError naming the choices."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def check_pooling(pooling: str) -> str:
    """`pooling` if it is one of POOLINGS, else ValueError naming the choices."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling
