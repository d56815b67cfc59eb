"""Pre-encoded sparse vectors as corpus records: parsing and validation.

Accepted record shapes (one document each):

* JSONL with a ``vector`` object, as Anserini's JsonVectorCollection and Seismic's input
  write them: ``{"id": "d1", "contents": "...", "vector": {"heart": 1.2, "##ing": 0.4}}``.
  Keys are tokens (``keys="tokens"``, the default) or decimal term ids (``keys="ids"``).
* Parquet (or JSONL) with two parallel list columns: ``indices`` (term ids) or ``tokens``,
  and ``values`` (weights), as sentence-transformers' ``encode_document`` output saved
  with pyarrow.

Tokens map to term ids through a `Vocabulary`: the tokenizer vocabulary of the model that
encodes queries, or a ``vocab.txt`` file (one token a line, the line number is the id).

Every record is checked: an unknown token, a term id outside the vocabulary, a negative or
non-finite weight, a weight that is not a number, and a term given twice each raise
`BadRecord` with the reason. Zero weights are dropped (a sparse vector stores no zeros).
Integer weights (Anserini stores quantised impacts) are accepted as numbers and reported
by `ParsedVector.integer_weights`, so the manifest can record that the corpus is quantised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from pipeline.data.jsonl import parse_json
from pipeline.data.records import BadRecord

VECTOR_KEYS = ("tokens", "ids")


@dataclass(frozen=True)
class Vocabulary:
    """Token -> term id, and the vocabulary size that bounds term ids."""

    token_to_id: Mapping[str, int]
    size: int

    @classmethod
    def from_tokens(cls, tokens: list[str]) -> "Vocabulary":
        """A vocabulary whose ids are positions in ``tokens`` (``vocab.txt`` order)."""
        mapping: dict[str, int] = {}
        for i, token in enumerate(tokens):
            mapping.setdefault(token, i)
        return cls(mapping, len(tokens))

    @classmethod
    def from_file(cls, path: str) -> "Vocabulary":
        """Read a ``vocab.txt``: one token a line, the 0-based line number is its id."""
        with open(path, encoding="utf-8") as f:
            return cls.from_tokens([line.rstrip("\n") for line in f])

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "Vocabulary":
        """A Hugging Face tokenizer's vocabulary (added tokens included)."""
        mapping = dict(tokenizer.get_vocab())
        return cls(mapping, max(len(tokenizer), max(mapping.values(), default=-1) + 1))


@dataclass
class ParsedVector:
    """One validated record: its id, ascending term ids and their positive weights."""

    doc_id: str
    indices: np.ndarray          # int32, ascending, unique
    values: np.ndarray           # float32, > 0
    integer_weights: bool        # every weight was given as an integer (quantised impacts)


def _weight(term: Any, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"weight of {term!r} must be a number, got {type(raw).__name__}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"weight of {term!r} is not finite ({raw!r})")
    if value < 0:
        raise ValueError(f"weight of {term!r} is negative ({raw!r})")
    return value


def _term_id(term: Any, form: str, vocab: Vocabulary | None) -> int:
    if form == "ids":
        if isinstance(term, (int, np.integer)) and not isinstance(term, bool):
            tid = int(term)
        elif isinstance(term, str) and term.isascii() and term.isdigit():
            tid = int(term)
        else:
            raise ValueError(f"term {term!r} is not a term id")
        if tid < 0 or (vocab is not None and tid >= vocab.size):
            bound = f" of size {vocab.size}" if vocab is not None else ""
            raise ValueError(f"term id {tid} is outside the vocabulary{bound}")
        return tid
    if not isinstance(term, str):
        raise ValueError(f"token must be a string, got {type(term).__name__}")
    if vocab is None:
        raise ValueError("tokens need a vocabulary: pass --model or --vocab")
    tid = vocab.token_to_id.get(term)
    if tid is None:
        raise ValueError(f"unknown token {term!r} (not in the vocabulary)")
    return tid


def _pairs_from_record(record: Mapping[str, Any]) -> tuple[list[tuple[Any, Any]], str | None]:
    """The (term, weight) pairs of a record, and the key form they force (or None)."""
    if "vector" in record:
        vector = record["vector"]
        if isinstance(vector, _PairList):     # an object with a repeated key
            return list(vector), None
        if not isinstance(vector, Mapping):
            raise ValueError(f"field 'vector' must be an object, got {type(vector).__name__}")
        return list(vector.items()), None
    if "values" in record and ("indices" in record or "tokens" in record):
        terms_field = "indices" if "indices" in record else "tokens"
        terms, values = record[terms_field], record["values"]
        if not isinstance(terms, (list, tuple, np.ndarray)) or \
                not isinstance(values, (list, tuple, np.ndarray)):
            raise ValueError(f"fields {terms_field!r} and 'values' must be lists")
        if len(terms) != len(values):
            raise ValueError(f"{len(terms)} {terms_field} but {len(values)} values")
        return list(zip(terms, values)), ("ids" if terms_field == "indices" else "tokens")
    raise ValueError("no vector: expected a 'vector' object, or 'indices'/'tokens' with 'values'")


def parse_vector(record: Mapping[str, Any], doc_id: str, *, keys: str = "tokens",
                 vocab: Vocabulary | None = None, source: str | None = None) -> ParsedVector:
    """Validate one record's vector; raises `BadRecord` naming ``source`` and the reason."""
    if keys not in VECTOR_KEYS:
        raise ValueError(f"vector keys must be one of {VECTOR_KEYS}, got {keys!r}")
    try:
        pairs, forced = _pairs_from_record(record)
        form = forced or keys
        ids = np.empty(len(pairs), np.int64)
        weights = np.empty(len(pairs), np.float64)
        integer = True
        seen: set[int] = set()
        for j, (term, raw) in enumerate(pairs):
            tid = _term_id(term, form, vocab)
            if tid in seen:
                raise ValueError(f"term {term!r} is given twice")
            seen.add(tid)
            weights[j] = _weight(term, raw)
            integer = integer and isinstance(raw, (int, np.integer))
            ids[j] = tid
        keep = weights > 0
        order = np.argsort(ids[keep], kind="stable")
        return ParsedVector(doc_id, ids[keep][order].astype(np.int32),
                            weights[keep][order].astype(np.float32), integer and bool(pairs))
    except ValueError as exc:
        raise BadRecord(str(exc), source=source, record=None) from None


def loads_vector_line(line: str) -> Any:
    """`pipeline.data.jsonl.parse_json` that keeps a ``vector`` object's pairs in order,
    duplicates included (plain ``json.loads`` keeps the last of two equal keys without a word)."""
    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            return _DuplicateKeys(pairs)
        return dict(pairs)

    obj = parse_json(line, object_pairs_hook=hook)
    if isinstance(obj, _DuplicateKeys):
        raise ValueError("a key is given twice in the record")
    if isinstance(obj, dict) and isinstance(obj.get("vector"), _DuplicateKeys):
        obj["vector"] = _PairList(obj["vector"].pairs)
    return obj


class _DuplicateKeys:
    """A JSON object that repeats a key, as parsed (before it reaches a record)."""

    def __init__(self, pairs):
        self.pairs = pairs


class _PairList(list):
    """A ``vector`` object's (key, value) pairs in order, kept because a key repeats."""
