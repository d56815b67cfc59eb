"""Decoder-only SPLADE (Mistral-SPLADE, Echo-Mistral-SPLADE) on tiny random Llama and Mistral models.

Real `LlamaConfig` / `MistralConfig` architectures, shrunk, random weights, untied LM heads
without bias, vocabularies 32,000 and 262,144; splade-tiny's tokenizer feeds them (it has
fewer tokens than the heads have rows, which is allowed). Expected vectors are computed here
one text at a time (no padding) from the model's full LM-head logits:

    w = max over pooled tokens of log1p(relu(logits))

pooled tokens being every token, or with echo (the text repeated, arXiv 2402.15449 echo
embeddings as used by Echo-Mistral-SPLADE) only the second copy's tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.encode import SpladeEncoder
from pipeline.encode.models import resolve_model

TEXTS = [
    "what causes heart disease",
    "Aspirin reduces the risk of myocardial infarction in adults over fifty.",
    "",
    "gene expression in the developing cortex " * 8,
    "x",
]
MAX_LENGTH = 40


def tiny_causal(kind: str, vocab_size: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=101, eos_token_id=102)
    config = LlamaConfig(**common) if kind == "llama" else MistralConfig(sliding_window=256, **common)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def causal_folders(tmp_path_factory) -> dict[str, Path]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    folders = {}
    for i, (kind, vocab) in enumerate((("llama", 32_000), ("mistral", 32_000), ("llama", 262_144))):
        torch.manual_seed(10 + i)
        model = tiny_causal(kind, vocab)
        assert model.get_output_embeddings().bias is None
        assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        folder = tmp_path_factory.mktemp(f"{kind}-{vocab}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[f"{kind}-{vocab}"] = folder
    return folders


@torch.inference_mode()
def expected_vectors(folder: Path, texts: list[str], echo: bool, max_length: int = MAX_LENGTH) -> np.ndarray:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = np.zeros((len(texts), model.config.vocab_size))
    for row, text in enumerate(texts):
        ids = tok(text, truncation=True, max_length=max_length)["input_ids"]   # [CLS] text [SEP]
        if echo:
            content = ids[1:-1]
            ids = ids[:1] + content + content + ids[-1:]
            pooled = slice(1 + len(content), 1 + 2 * len(content))
        else:
            pooled = slice(0, len(ids))
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        weights = torch.log1p(torch.relu(logits[pooled]))
        if weights.shape[0]:
            out[row] = weights.max(dim=0).values.numpy()
    return out


@pytest.mark.parametrize("name", ["llama-32000", "mistral-32000", "llama-262144"])
@pytest.mark.parametrize("echo", [False, True])
def test_causal_lm_splade_matches_expression(causal_folders, name, echo):
    folder = causal_folders[name]
    encoder = SpladeEncoder(str(folder), device="cpu", max_length=MAX_LENGTH, query_max_length=MAX_LENGTH,
                            batch_size=3, echo=echo)
    settings = encoder.settings()
    assert (settings["layout"], settings["architecture"], settings["echo"]) == ("causal-lm", "causal-lm", echo)
    assert encoder._body.bias is None and encoder.vocab_size == int(name.rsplit("-", 1)[1])
    expected = expected_vectors(folder, TEXTS, echo)
    ours = encoder.encode(TEXTS)
    assert ours.has_canonical_format and (expected > 0).sum() > 100
    np.testing.assert_allclose(ours.toarray(), expected, rtol=1e-4, atol=1e-5)
    # the split API (separate tokenize stage) gives the same vectors; echo happens inside
    np.testing.assert_allclose(encoder.encode_tokenized(**encoder.tokenize(TEXTS)).toarray(), expected,
                               rtol=1e-4, atol=1e-5)
    if echo:
        assert not ours[2].nnz, "an empty text has no second copy to pool"


def test_echo_needs_a_causal_lm(tmp_path):
    from pipeline.encode.layouts import UnsupportedLayout

    with pytest.raises(UnsupportedLayout, match="echo applies to decoder-only"):
        SpladeEncoder("splade-tiny", device="cpu", echo=True)


def test_echo_inputs_layout():
    from pipeline.encode.encoder import echo_inputs

    ids = torch.tensor([[101, 5, 6, 7, 102], [101, 9, 102, 0, 0], [101, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    out_ids, out_mask, pool = echo_inputs(ids, mask, frozenset({101, 102, 0}), 0)
    assert out_ids[0].tolist() == [101, 5, 6, 7, 5, 6, 7, 102]
    assert pool[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert out_ids[1].tolist()[:5] == [101, 9, 9, 102, 0] and pool[1].tolist()[:5] == [0, 0, 1, 0, 0]
    assert out_mask[2].tolist()[:3] == [1, 1, 0] and not pool[2].any()
