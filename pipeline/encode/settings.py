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
    """A SpladeEncoder matching `settings` (as written by `SpladeEncoder.settings()`)."""
    from pipeline.encode.encoder import SpladeEncoder

    try:
        encoder = SpladeEncoder(settings["model"], device=device, max_length=settings["max_length"],
                                query_max_length=settings["query_max_length"],
                                dtype="auto" if device == "auto" else settings.get("dtype", "auto"),
                                batch_size=batch_size, top_k=settings.get("top_k"),
                                threshold=settings.get("threshold", 0.0))
    except KeyError as exc:
        raise EncoderMismatch(f"index manifest lacks encoder setting {exc}") from None
    expected = settings.get("fingerprint")
    actual = encoder.settings()["fingerprint"]
    if expected and actual != expected:
        raise EncoderMismatch(
            f"model {settings['model']!r} here (fingerprint {actual[:12]}) is not the model the index "
            f"was built with (fingerprint {expected[:12]}); re-index or point --model at the original")
    return encoder
