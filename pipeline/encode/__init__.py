"""SPLADE encoding: model resolution and layouts, the encoder, inference-free query encoders,
and the plain reference expression.

Names load lazily so that `pipeline.encode.models` stays importable without torch.
Imports `lsr_kernels` and `pipeline.errors` only: nothing about storage, indexes, Ray or serving.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SpladeEncoder": "pipeline.encode.encoder",
    "EncoderConfig": "pipeline.encode.config",
    "resolve_model": "pipeline.encode.models",
    "ModelNotFound": "pipeline.encode.models",
    "model_fingerprint": "pipeline.encode.fingerprint",
    "UnsupportedModel": "pipeline.encode.mlm",
    "prune_to_csr": "pipeline.encode.sparse",
    "encode_reference": "pipeline.encode.reference",
    "encoder_from_settings": "pipeline.encode.settings",
    "query_encoder_from_settings": "pipeline.encode.settings",
    "StaticQueryEncoder": "pipeline.encode.static",
    "read_layout": "pipeline.encode.layouts",
    "UnsupportedLayout": "pipeline.encode.layouts",
    "EncoderMismatch": "pipeline.encode.settings",
    "load_tokenizer": "pipeline.encode.tokens",
    "token_ids": "pipeline.encode.tokens",
    "splade_head_reference": "pipeline.encode.reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.encode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
