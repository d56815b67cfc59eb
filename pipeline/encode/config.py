"""Encoder configuration: what shapes the vectors (model, lengths, pruning, dtype) and how to run.

Defaults match the reference settings: documents truncated at 256 tokens, queries at 64,
no pruning of the vectors (top_k None, threshold 0: only exact zeros are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Accepted spellings of the compute dtype -> torch dtype.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class EncoderConfig:
    """Validated settings of a `SpladeEncoder`."""

    model: str = "splade-tiny"
    device: str = "auto"
    max_length: int = 256
    query_max_length: int = 64
    dtype: str = "auto"
    batch_size: int = 32
    top_k: int | None = None
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        for name in ("max_length", "query_max_length"):
            value = getattr(self, name)
            if not _is_int(value) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2 (room for the special tokens), got {value!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {self.top_k!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not self.threshold >= 0.0 or self.threshold == float("inf"):
            raise ValueError(f"threshold must be a finite number >= 0 (weights are >= 0), got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        resolve_device(self.device)  # validates the spelling


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch spells it ('cpu', 'cuda:1')."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA, float32 elsewhere; otherwise the named dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} not supported; use one of {sorted(DTYPES)}")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """Canonical name of a torch dtype: 'float32', 'float16', 'bfloat16'."""
    return str(dtype).removeprefix("torch.")
