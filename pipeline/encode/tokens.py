"""Tokenization shared by the encoder and the indexing job's separate tokenize stage.

Both must cut text into exactly the same token ids, so there is one function for it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence


@lru_cache(maxsize=4)
def load_tokenizer(source: str):
    """The tokenizer of a resolved model source (local directory or hub id), cached per process.

    For a sentence-transformers directory, the document route's tokenizer (a Router keeps it in
    the document transformer's folder): documents are what a separate tokenize stage feeds.
    """
    import os

    from transformers import AutoTokenizer

    if os.path.isfile(os.path.join(source, "modules.json")):
        from pipeline.encode.layouts import read_layout

        source = read_layout(source).document.folder
    return AutoTokenizer.from_pretrained(source)


def token_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, special tokens included, truncated to `max_length`, unpadded."""
    if not texts:
        return []
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
