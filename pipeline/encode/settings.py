"""Rebuild the encoder an index was built with, from its manifest's encoder settings.

Queries must be encoded by the model that encoded the documents. The settings carry the
model's content fingerprint; a model that resolves to different files is refused rather
than silently mixing vectors from two models.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError


class EncoderMismatch(UserError, ValueError):
    """The model available here is not the one the index was built with."""


def encoder_from_settings(settings: dict[str, Any], device: str = "auto", batch_size: int = 32):
    """A SpladeEncoder matching `settings` (as written by `SpladeEncoder.settings()`).

    Settings written before pooling/activation/echo were recorded load with the defaults
    (the model's own, else max pooling, "relu", no echo).
    """
    from pipeline.encode.encoder import SpladeEncoder

    try:
        encoder = SpladeEncoder(settings["model"], device=device, max_length=settings["max_length"],
                                query_max_length=settings["query_max_length"],
                                dtype="auto" if device == "auto" else settings.get("dtype", "auto"),
                                batch_size=batch_size, top_k=settings.get("top_k"),
                                threshold=settings.get("threshold", 0.0), pooling=settings.get("pooling"),
                                activation=settings.get("activation"), echo=bool(settings.get("echo", False)))
    except KeyError as exc:
        raise EncoderMismatch(f"index manifest lacks encoder setting {exc}") from None
    _check_fingerprint(settings, encoder.settings()["fingerprint"])
    return encoder


def _check_fingerprint(settings: dict[str, Any], actual: str) -> None:
    expected = settings.get("fingerprint")
    if expected and actual != expected:
        raise EncoderMismatch(
            f"model {settings['model']!r} here (fingerprint {actual[:12]}) is not the model the index "
            f"was built with (fingerprint {expected[:12]}); re-index or point --model at the original")


def query_encoder_from_settings(settings: dict[str, Any], device: str = "auto", batch_size: int = 32):
    """What encodes queries for an index built with `settings`: `encode_queries(texts) -> CSR`.

    Inference-free models (settings["query_encoder"]["type"] == "inference-free") give a
    `StaticQueryEncoder`: only the tokenizer and the (V,) weight table are loaded, no network
    (microseconds per query; safe to run inside a serving ingress). Any other model gives the
    full `SpladeEncoder` (`encoder_from_settings`). The model's fingerprint is checked either way.
    """
    query = settings.get("query_encoder") or {}
    if query.get("type") != "inference-free":
        return encoder_from_settings(settings, device=device, batch_size=batch_size)
    from pipeline.encode.encoder import model_layout, static_query_encoder
    from pipeline.encode.fingerprint import model_fingerprint
    from pipeline.encode.layouts import StaticRoute
    from pipeline.encode.models import resolve_model

    try:
        source = resolve_model(settings["model"])
        layout = model_layout(source)
        if not isinstance(layout.query, StaticRoute):
            raise EncoderMismatch(f"index records an inference-free query encoder but {settings['model']!r} "
                                  f"here has a {layout.kind} layout with a neural query route")
        _check_fingerprint(settings, model_fingerprint(source))
        return static_query_encoder(layout.query, settings["vocab_size"], settings["query_max_length"],
                                    settings.get("top_k"), settings.get("threshold", 0.0), settings=dict(settings))
    except KeyError as exc:
        raise EncoderMismatch(f"index manifest lacks encoder setting {exc}") from None
