"""A Hugging Face masked-LM (or causal LM) split at its vocabulary projection.

SPLADE needs the final hidden states (after the MLM transform: dense, activation, layer norm)
and the projection's weight and bias, so the fused head can replace the (B, L, V) logits.
Architectures name these parts differently (BERT `cls.predictions.decoder`, DistilBERT
`vocab_projector`, RoBERTa/XLM-R `lm_head.decoder`); `get_output_embeddings()` finds the
projection generically, and a forward pre-hook on it captures its input and stops the
forward there, so the projection itself never runs.

Decoder-only LMs (Mistral, Llama: AutoModelForCausalLM) split the same way: the final hidden
states (after the last norm) and the LM head, which may be untied from the input embeddings and
usually has no bias.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from pipeline.errors import UserError

logger = logging.getLogger(__name__)


class UnsupportedModel(UserError, ValueError):
    """The model has no linear vocabulary projection whose output is the MLM logits."""


class _Captured(Exception):
    """Carries the projection's input out of the model forward (raised by the pre-hook)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("final hidden states captured")
        self.hidden = hidden


def _stop_at_projection(module: torch.nn.Module, args: tuple) -> None:
    raise _Captured(args[0])


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' weight-loading progress bar for one load (library code never prints)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class MaskedLMBody:
    """Runs a masked-LM up to, not including, its vocabulary projection (V, H) + bias (V,)."""

    def __init__(self, model: torch.nn.Module):
        projection = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(projection, torch.nn.Linear):
            raise UnsupportedModel(
                f"{type(model).__name__} has no linear vocabulary projection "
                f"(get_output_embeddings() returned {type(projection).__name__}); "
                "a SPLADE model must be a masked-LM (e.g. BertForMaskedLM)")
        self.model = model
        self.projection = projection
        self.weight: torch.Tensor = projection.weight.detach()          # (V, H)
        self.bias: torch.Tensor | None = (projection.bias.detach()      # (V,)
                                          if projection.bias is not None else None)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, L, H) in the model's dtype: the projection's input."""
        handle = self.projection.register_forward_pre_hook(_stop_at_projection)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask)
        except _Captured as captured:
            return captured.hidden
        finally:
            handle.remove()
        raise UnsupportedModel(f"{type(self.model).__name__}'s forward never reached its output embeddings")

    def check_split(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Verify on a probe batch that projecting the captured states reproduces the model's logits.

        Guards the generic split against heads that do more after the projection (a scale,
        a softcap, unpadding), which would make the fused head silently wrong.
        """
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        hidden = self.hidden_states(input_ids, attention_mask)
        if hidden.shape[:2] != input_ids.shape or hidden.shape[-1] != self.weight.shape[1]:
            raise UnsupportedModel(
                f"{type(self.model).__name__}: projection input has shape {tuple(hidden.shape)}, "
                f"expected (B, L, H) = {(*input_ids.shape, self.weight.shape[1])}")
        projected = torch.nn.functional.linear(hidden, self.weight, self.bias)
        scale = logits.abs().max().float().clamp(min=1.0)
        error = (projected.float() - logits.float()).abs().max() / scale
        if not bool(error <= 1e-3):
            raise UnsupportedModel(
                f"{type(self.model).__name__}: logits differ from the vocabulary projection of the "
                f"captured hidden states (relative error {float(error):.2e}); the head does more "
                "than a linear projection, which the fused SPLADE head cannot reproduce")


def load_masked_lm(source: str, device: torch.device, dtype: torch.dtype, architecture: str = "masked-lm"):
    """(tokenizer, MaskedLMBody) for a local directory or hub id, in eval mode on `device`.

    `architecture` "masked-lm" loads AutoModelForMaskedLM, "causal-lm" AutoModelForCausalLM.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from pipeline.encode.tokens import load_tokenizer

    if architecture not in ("masked-lm", "causal-lm"):
        raise ValueError(f"architecture must be 'masked-lm' or 'causal-lm', got {architecture!r}")
    auto = AutoModelForCausalLM if architecture == "causal-lm" else AutoModelForMaskedLM
    with _quiet_transformers():
        tokenizer = load_tokenizer(source)
        model = auto.from_pretrained(source, dtype=dtype)
    model = model.to(device).eval()
    body = MaskedLMBody(model)
    probe = tokenizer(["splade probe: what causes heart disease?"], return_tensors="pt")
    with torch.inference_mode():
        body.check_split(probe["input_ids"].to(device), probe["attention_mask"].to(device))
    logger.info("loaded %s (%s) on %s as %s: vocab %d, hidden %d", source, type(model).__name__,
                device, dtype, body.vocab_size, body.weight.shape[1])
    return tokenizer, body
