"""CPU twin of the fused SPLADE head: padding-free, vocabulary-tiled, max-first.

Same contract as the Triton kernel (see `lsr_kernels.checks`). The (B, L, V) logits never exist:

1. Pack. The valid tokens of each row are gathered into one (T, H) float32 matrix, each row
   rounded up to a whole number of chunks of `CHUNK` tokens by repeating one of its own tokens
   (a repeat cannot change a max). Padding costs at most CHUNK - 1 token rows per row.
2. Per vocabulary tile: one GEMM of all packed tokens against the tile gives (T, V_tile) raw
   logits in a reused buffer; a max over each chunk (a strided view, vectorised along the
   vocabulary) gives (T / CHUNK, V_tile); a max over each row's chunks gives (B, V_tile).
3. Bias and the activation (ReLU then log1p, or log1p twice) run once, on the (B, V) result.

Peak extra memory is one (T, V_tile) tile; every logit is written once and read once.

`splade_sum_cpu` is the sum-pooling counterpart (original SPLADE, SpladePooling "sum"): the
activation cannot move out of a sum, so each (T, V_tile) tile is activated and summed per row
before the next tile; the same one-tile peak memory.
"""

from __future__ import annotations

import torch

from lsr_kernels.checks import check_activation, check_head_inputs

#: Tokens per level-1 max. Measured on the 2-core EPYC for one (8192, 1024) float32 logit tile:
#: strided max over chunks of 16 ~9 ms CPU (4: 11, 8: 9, 32: 13), torch.segment_reduce over
#: whole rows 31 ms. 16 also keeps the padding small (at most 15 repeated tokens per row).
CHUNK = 16
#: Bytes of float32 logits per vocabulary tile (T x V_tile x 4), and the tile width bounds.
#: Single-thread CPU time for 32 x 256 tokens, H=128, was flat within noise from 512 to 4096
#: columns (1.21-1.35 s; 256 columns: 1.42 s); this budget gives 1024 columns there.
DEFAULT_TILE_BYTES = 32 * 1024 * 1024
MIN_VOCAB_TILE = 256
MAX_VOCAB_TILE = 4096


def vocab_tile_for(n_tokens: int, tile_bytes: int = DEFAULT_TILE_BYTES) -> int:
    """Columns per vocabulary tile so that one (n_tokens, tile) float32 block is about `tile_bytes`."""
    columns = tile_bytes // (4 * max(n_tokens, 1))
    columns = max(MIN_VOCAB_TILE, min(MAX_VOCAB_TILE, columns))
    return (columns // 64) * 64  # whole SIMD / cache-line multiples


def pack_tokens(hidden: torch.Tensor, valid: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (T, H), chunks_per_row (B,)): each row's valid tokens in order, padded to whole chunks
    with repeats of its first valid token; rows without tokens get no chunks."""
    n_rows, seq_len, n_hidden = hidden.shape
    lengths = valid.sum(dim=1)
    chunks_per_row = (lengths + chunk - 1) // chunk
    slots_per_row = chunks_per_row * chunk
    width = int(slots_per_row.max()) if n_rows else 0
    # Valid positions first, in order (a stable sort of the padding flags).
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    slots = torch.arange(width, device=hidden.device)
    source = torch.where(slots[None, :] < lengths[:, None], slots[None, :], 0).clamp_(max=seq_len - 1)
    positions = order.gather(1, source)
    rows = torch.arange(n_rows, device=hidden.device)[:, None] * seq_len
    flat_index = (rows + positions)[slots[None, :] < slots_per_row[:, None]]
    return hidden.reshape(n_rows * seq_len, n_hidden)[flat_index], chunks_per_row


@torch.inference_mode()
def splade_max_cpu(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   mask: torch.Tensor, *, vocab_tile: int | None = None, activation: str = "relu") -> torch.Tensor:
    """SPLADE weights (B, V) float32 from hidden states (B, L, H), projection (V, H), bias (V,), mask (B, L).

    `activation` "relu" gives log1p(relu(max logit)), "log1p_relu" log1p(log1p(relu(max logit))).

    Plain PyTorch, so it runs on any device, but it is tuned for CPU. fp16/bf16 inputs are
    computed in float32 (CPUs without native bf16 GEMM are faster so, and it matches the Triton
    kernel's float32 accumulation).
    """
    n_rows, _, vocab_size, _ = check_head_inputs(hidden, weight, bias, mask)
    check_activation(activation)
    if vocab_tile is not None and vocab_tile < 1:
        raise ValueError(f"vocab_tile must be >= 1, got {vocab_tile}")
    out = torch.empty((n_rows, vocab_size), dtype=torch.float32, device=hidden.device)
    tokens, chunks_per_row = pack_tokens(hidden, mask != 0)
    if tokens.shape[0] == 0:
        return out.zero_()
    tokens = tokens.to(torch.float32)
    n_chunks = tokens.shape[0] // CHUNK
    uniform = bool((chunks_per_row == chunks_per_row[0]).all())  # e.g. full or bucketed batches
    tile = min(vocab_tile or vocab_tile_for(tokens.shape[0]), vocab_size)
    buffer = torch.empty((tokens.shape[0], tile), dtype=torch.float32, device=hidden.device)
    for start in range(0, vocab_size, tile):
        width = min(tile, vocab_size - start)
        w_tile = weight[start:start + width].to(torch.float32)
        logits = torch.matmul(tokens, w_tile.T, out=buffer[:, :width]) if width == tile else tokens @ w_tile.T
        chunk_max = logits.view(n_chunks, CHUNK, width).amax(dim=1)
        if uniform:
            out[:, start:start + width] = chunk_max.view(n_rows, -1, width).amax(dim=1)
        else:  # rows without chunks get -inf, hence 0 after bias and ReLU below
            out[:, start:start + width] = torch.segment_reduce(
                chunk_max, "max", lengths=chunks_per_row, axis=0, unsafe=True)
    if bias is not None:
        out.add_(bias.to(torch.float32))
    return _activate_(out, activation)


def _activate_(x: torch.Tensor, activation: str) -> torch.Tensor:
    """In place: log1p(relu(x)), and one more log1p for "log1p_relu"."""
    x.clamp_(min=0.0).log1p_()
    if activation == "log1p_relu":
        x.log1p_()
    return x


@torch.inference_mode()
def splade_sum_cpu(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   mask: torch.Tensor, *, vocab_tile: int | None = None, activation: str = "relu") -> torch.Tensor:
    """Sum-pooled SPLADE weights (B, V) float32: sum over valid tokens of act(hidden . weight + bias).

    Same inputs as `splade_max_cpu`; `mask` != 0 marks the tokens pooled. Only the valid tokens
    are projected, one vocabulary tile at a time, so the (B, L, V) logits never exist.
    Plain PyTorch: runs on any device (the sum path has no Triton kernel).
    """
    n_rows, seq_len, vocab_size, n_hidden = check_head_inputs(hidden, weight, bias, mask)
    check_activation(activation)
    if vocab_tile is not None and vocab_tile < 1:
        raise ValueError(f"vocab_tile must be >= 1, got {vocab_tile}")
    out = torch.zeros((n_rows, vocab_size), dtype=torch.float32, device=hidden.device)
    valid = mask != 0
    tokens = hidden[valid].to(torch.float32)                                   # (T, H), row-major order
    row_of = torch.arange(n_rows, device=hidden.device)[:, None].expand(n_rows, seq_len)[valid]
    if tokens.shape[0] == 0:
        return out
    tile = min(vocab_tile or vocab_tile_for(tokens.shape[0]), vocab_size)
    for start in range(0, vocab_size, tile):
        width = min(tile, vocab_size - start)
        logits = tokens @ weight[start:start + width].to(torch.float32).T     # (T, width)
        if bias is not None:
            logits += bias[start:start + width].to(torch.float32)
        out[:, start:start + width].index_add_(0, row_of, _activate_(logits, activation))
    return out
