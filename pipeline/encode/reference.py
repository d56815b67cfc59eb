"""The plain naver/splade expression, kept as the oracle that every fast path is tested against.

`max_over_tokens(log1p(relu(logits)) * attention_mask)` on the full (B, L, V) logits.
Slow and memory-hungry by design: never use it outside tests and reference runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def splade_head_reference(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits and (B, L) mask -> (B, V) SPLADE weights, exactly as naver/splade writes it."""
    weights = torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1).to(logits.dtype)
    return torch.max(weights, dim=1).values


@torch.inference_mode()
def encode_reference(model: str, texts: Sequence[str], max_length: int = 256,
                     batch_size: int = 16, device: str = "cpu",
                     dtype: torch.dtype = torch.float32) -> sp.csr_matrix:
    """Encode `texts` with a masked-LM SPLADE model through the plain expression (float32 on the
    CPU by default: the oracle; another `device`/`dtype` gives the plain pipeline there, the peer
    the fused head is benchmarked against)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from pipeline.encode.models import resolve_model

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    mlm = AutoModelForMaskedLM.from_pretrained(path, dtype=dtype).to(device).eval()
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), max_length=max_length,
                          truncation=True, padding=True, return_tensors="pt").to(device)
        logits = mlm(**batch).logits
        weights = splade_head_reference(logits, batch["attention_mask"])
        rows.append(sp.csr_matrix(weights.float().cpu().numpy()))
    if not rows:
        return sp.csr_matrix((0, mlm.config.vocab_size), dtype=np.float32)
    out = sp.vstack(rows, format="csr").astype(np.float32)
    out.eliminate_zeros()
    return out
