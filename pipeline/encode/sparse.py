"""Dense SPLADE weights (B, V) -> CSR rows, with optional top-k and threshold pruning.

Pruning runs on the device that holds the weights, and only the kept entries travel to the host.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def prune_to_csr(weights: torch.Tensor, top_k: int | None = None, threshold: float = 0.0) -> sp.csr_matrix:
    """CSR float32 (B, V) keeping, per row, the `top_k` largest weights (all if None) that are > `threshold`.

    Column indices are sorted within each row and no explicit zeros are stored (threshold >= 0).
    Raises FloatingPointError on NaN or infinite weights (e.g. fp16 overflow in the model).
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be (B, V), got shape {tuple(weights.shape)}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    n_rows, vocab_size = weights.shape
    if not bool(torch.isfinite(weights).all()):
        raise FloatingPointError("SPLADE weights contain NaN or inf (model overflow? try dtype='float32')")
    if top_k is not None and top_k < vocab_size:
        values, cols = torch.topk(weights, top_k, dim=1, sorted=False)
        cols, order = torch.sort(cols, dim=1)
        values = values.gather(1, order)
        keep = values > threshold
        rows = torch.arange(n_rows, device=weights.device).unsqueeze(1).expand_as(cols)[keep]
        cols, values = cols[keep], values[keep]
    else:
        rows, cols = torch.nonzero(weights > threshold, as_tuple=True)  # row-major: sorted
        values = weights[rows, cols]
    counts = torch.bincount(rows, minlength=n_rows)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts.cpu().numpy(), out=indptr[1:])
    index_dtype = np.int32 if indptr[-1] < np.iinfo(np.int32).max and vocab_size < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix(
        (values.to(torch.float32).cpu().numpy(), cols.cpu().numpy().astype(index_dtype),
         indptr.astype(index_dtype)), shape=(n_rows, vocab_size))
