"""CPU twin of the fused SPLADE head: padding-free, vocabulary-tiled, max-first.

Same contract as the Triton kernel (see `kernels.checks`). The valid tokens of the whole batch
are packed into one (T, H) matrix, so padding costs no FLOPs. The vocabulary is walked in tiles:
one GEMM of all tokens against a tile gives (T, V_tile) raw logits that stay in cache, a
segment max over each row's tokens reduces them to (B, V_tile), and bias, ReLU and log1p run
once on the (B, V) result. The (B, L, V) logits never exist; peak extra memory is one tile.
"""

from __future__ import annotations

import torch

from kernels.checks import check_head_inputs

#: Bytes of float32 logits per vocabulary tile. Measured on a 2-core EPYC (2 MiB L2 per core,
#: 32 MiB L3): tiles of a few MiB keep the GEMM efficient and its output in cache for the max.
DEFAULT_TILE_BYTES = 8 * 1024 * 1024
MIN_VOCAB_TILE = 256
MAX_VOCAB_TILE = 8192


def vocab_tile_for(n_tokens: int, tile_bytes: int = DEFAULT_TILE_BYTES) -> int:
    """Columns per vocabulary tile so that one (n_tokens, tile) float32 block is about `tile_bytes`."""
    columns = tile_bytes // (4 * max(n_tokens, 1))
    columns = max(MIN_VOCAB_TILE, min(MAX_VOCAB_TILE, columns))
    return (columns // 64) * 64  # whole SIMD / cache-line multiples


@torch.inference_mode()
def splade_max_cpu(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   mask: torch.Tensor, *, vocab_tile: int | None = None) -> torch.Tensor:
    """SPLADE weights (B, V) float32 from hidden states (B, L, H), projection (V, H), bias (V,), mask (B, L).

    Runs on whatever device the inputs are on (it is plain PyTorch), but is tuned for CPU.
    fp16/bf16 inputs are computed in float32 (CPUs without native bf16 GEMM are faster so, and
    it matches the Triton kernel's float32 accumulation).
    """
    n_rows, _, vocab_size, _ = check_head_inputs(hidden, weight, bias, mask)
    if vocab_tile is not None and vocab_tile < 1:
        raise ValueError(f"vocab_tile must be >= 1, got {vocab_tile}")
    out = torch.empty((n_rows, vocab_size), dtype=torch.float32, device=hidden.device)
    valid = mask != 0
    lengths = valid.sum(dim=1)
    tokens = hidden[valid]  # (T, H): each row's tokens contiguous, rows in order
    if tokens.dtype != torch.float32:
        tokens = tokens.float()
    n_tokens = tokens.shape[0]
    if n_tokens == 0:
        return out.zero_()
    tile = vocab_tile or vocab_tile_for(n_tokens)
    for start in range(0, vocab_size, tile):
        stop = min(start + tile, vocab_size)
        w_tile = weight[start:stop]
        if w_tile.dtype != torch.float32:
            w_tile = w_tile.float()
        logits = tokens @ w_tile.T  # (T, tile) raw logits, cache resident
        # Rows without tokens get -inf here and 0 after bias + ReLU below.
        out[:, start:stop] = torch.segment_reduce(logits, "max", lengths=lengths, axis=0, unsafe=True)
    if bias is not None:
        out.add_(bias.to(torch.float32))
    return out.clamp_(min=0.0).log1p_()
