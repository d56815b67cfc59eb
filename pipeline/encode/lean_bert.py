"""A lean forward of a BERT masked-LM body for one unpadded sequence, on the model's own weights.

Hugging Face's `BertForMaskedLM.forward` spends most of a 2-layer BERT-tiny query in module
dispatch, mask building and output bookkeeping, not arithmetic. For one query (L real tokens,
no padding, so no attention mask) the same math is a few torch calls per layer:

    x = LayerNorm(word[ids] + (position + token_type[0])[0:L])      (the sum precomputed)
    per layer:  q, k, v = split(x @ W_qkv.T + b_qkv)             (one fused matmul)
                a = LayerNorm(sdpa(q, k, v) @ W_o.T + b_o + x)     (heads, no mask)
                x = LayerNorm(gelu(a @ W_i.T + b_i) @ W_out.T + b_out + a)
    transform:  LayerNorm(gelu(x @ W_t.T + b_t))                   (the MLM head's input)

It returns the (L, H) input of the vocabulary projection, exactly what `MaskedLMBody`
captures from the HF forward (equal up to float32 rounding; tests compare both). Only the
plain BERT layout is implemented (absolute positions, erf GELU, encoder only, float32);
`LeanBert.from_model` returns None for anything else and the caller keeps the HF forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GELU_ACTS = ("gelu",)


class LeanBert:
    """The BERT body plus the MLM transform of a `BertForMaskedLM`, as plain tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = model.config
        bert, transform = model.bert, model.cls.predictions.transform
        emb = bert.embeddings
        self.eps = float(cfg.layer_norm_eps)
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.word = emb.word_embeddings.weight.detach()
        # Position and token type 0 summed once (every query is one segment).
        self.position_type0 = (emb.position_embeddings.weight.detach()
                               + emb.token_type_embeddings.weight.detach()[0])
        self.emb_norm = self._norm(emb.LayerNorm)
        self.layers = []
        for layer in bert.encoder.layer:
            att = layer.attention
            qkv_w = torch.cat([att.self.query.weight, att.self.key.weight,
                               att.self.value.weight]).detach().t().contiguous()    # (H, 3H)
            qkv_b = torch.cat([att.self.query.bias, att.self.key.bias,
                               att.self.value.bias]).detach()
            self.layers.append((
                qkv_b, qkv_w,
                att.output.dense.bias.detach(), att.output.dense.weight.detach().t().contiguous(),
                self._norm(att.output.LayerNorm),
                layer.intermediate.dense.bias.detach(),
                layer.intermediate.dense.weight.detach().t().contiguous(),
                layer.output.dense.bias.detach(), layer.output.dense.weight.detach().t().contiguous(),
                self._norm(layer.output.LayerNorm)))
        self.t_b = transform.dense.bias.detach()
        self.t_w = transform.dense.weight.detach().t().contiguous()
        self.t_norm = self._norm(transform.LayerNorm)
        self.max_positions = int(self.position_type0.shape[0])

    @staticmethod
    def _norm(ln: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        return ln.weight.detach(), ln.bias.detach()

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "LeanBert | None":
        """A lean forward for a plain float32 `BertForMaskedLM` on CPU; None for any other model."""
        cfg = getattr(model, "config", None)
        if (type(model).__name__ != "BertForMaskedLM" or cfg is None
                or getattr(cfg, "model_type", None) != "bert"
                or getattr(cfg, "hidden_act", None) not in _GELU_ACTS
                or getattr(cfg, "position_embedding_type", "absolute") != "absolute"
                or getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False)
                or cfg.hidden_size % cfg.num_attention_heads):
            return None
        try:
            if model.bert.embeddings.word_embeddings.weight.dtype != torch.float32 \
                    or model.bert.embeddings.word_embeddings.weight.device.type != "cpu":
                return None
            lean = cls(model)
        except AttributeError:          # a BERT variant with a different module tree
            return None
        return lean

    def _ln(self, x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), norm[0], norm[1], self.eps)

    def hidden_states(self, ids: list[int]) -> torch.Tensor:
        """Token ids of one sequence (no padding) -> (L, H) input of the vocabulary projection."""
        n = len(ids)
        if n > self.max_positions:
            raise ValueError(f"sequence of {n} tokens exceeds {self.max_positions} positions")
        index = torch.tensor(ids, dtype=torch.long)
        x = self._ln(self.word[index] + self.position_type0[:n], self.emb_norm)
        h, d = self.heads, self.hidden // self.heads
        for qkv_b, qkv_w, o_b, o_w, o_norm, i_b, i_w, out_b, out_w, out_norm in self.layers:
            # (3, 1, h, L, d): 4-d operands, for which torch's CPU SDPA runs its fused kernel
            # (3-d ones go down the op-by-op math path, twice as slow for one query).
            qkv = torch.addmm(qkv_b, x, qkv_w).view(1, n, 3, h, d).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(*qkv.unbind())                    # (1, h, L, d)
            ctx = ctx.transpose(1, 2).reshape(n, self.hidden)
            a = self._ln(torch.addmm(o_b, ctx, o_w) + x, o_norm)
            x = self._ln(torch.addmm(out_b, F.gelu(torch.addmm(i_b, a, i_w)), out_w) + a, out_norm)
        return self._ln(F.gelu(torch.addmm(self.t_b, x, self.t_w)), self.t_norm)
