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


# Texts the single-text tokenizer must cut exactly as `token_ids` does before it is used:
# plain, empty, accents and CJK, a special token written in the text, one far past any
# query length (truncation), and whitespace only.
_PROBES = ("what causes heart disease and how is it treated", "",
           "naïve café Straße 東京大学 [SEP] [MASK] ünïcödé", "ab " * 600, "  \t\n ")


class SingleTextTokenizer:
    """One text -> its token ids, exactly as `token_ids` cuts it, for serving's one-query path.

    A Hugging Face fast tokenizer's ``__call__`` spends about 100 µs a call in Python
    (argument handling, setting truncation on its Rust backend, building a BatchEncoding)
    for a query the backend tokenizes in about 60. This keeps its own copy of the backend
    with truncation set once and calls ``encode`` on it. The copy is checked against
    `token_ids` on a few probe texts when built; a tokenizer without a Rust backend, or a
    copy that cuts any probe differently, keeps the ``__call__`` path. Not for concurrent
    use (the caller serialises, as `pipeline.encode.query.QueryFastPath` does).
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.backend = self._own_backend(tokenizer, max_length)

    @staticmethod
    def _own_backend(tokenizer, max_length: int):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            from tokenizers import Tokenizer

            own = Tokenizer.from_str(backend.to_str())
            own.no_padding()
            own.enable_truncation(max_length)
            expected = token_ids(tokenizer, list(_PROBES), max_length)
            if [own.encode(text).ids for text in _PROBES] != expected:
                return None
        except Exception:           # noqa: BLE001 - any failure keeps the __call__ path
            return None
        return own

    def __call__(self, text: str) -> list[int]:
        if self.backend is not None:
            return self.backend.encode(text).ids
        return token_ids(self.tokenizer, [text], self.max_length)[0]
