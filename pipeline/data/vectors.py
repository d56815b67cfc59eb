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
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

from pipeline.data.jsonl import parse_json
from pipeline.data.records import BadRecord, FieldMap, parse_record
from pipeline.errors import UserError

VECTOR_KEYS = ("tokens", "ids")


class VectorVocabularyError(UserError, ValueError):
    """The vocabulary of a vectors corpus cannot be read, or does not fit the query model."""


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
    def from_file(cls, path: str, storage_options: dict | None = None) -> "Vocabulary":
        """Read a ``vocab.txt`` (local path or URL): one token a line, the 0-based line number
        is its id."""
        from pipeline.objstore import read_bytes, resolve

        lines = read_bytes(resolve(path, storage_options)).decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()      # the newline that ends the last line starts no token
        return cls.from_tokens(lines)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "Vocabulary":
        """A Hugging Face tokenizer's vocabulary (added tokens included)."""
        mapping = dict(tokenizer.get_vocab())
        return cls(mapping, max(len(tokenizer), max(mapping.values(), default=-1) + 1))


def vocab_fingerprint(path: str, storage_options: dict | None = None) -> str:
    """SHA-256 of a ``vocab.txt``'s bytes: what a job's plan id depends on (an edited file at
    the same path maps tokens to other ids, so it must not resume the old plan)."""
    import hashlib

    from pipeline.objstore import read_bytes, resolve

    try:
        data = read_bytes(resolve(path, storage_options))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise VectorVocabularyError(f"cannot read --vocab {path}: {exc}") from None
    return hashlib.sha256(data).hexdigest()


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


@dataclass(frozen=True)
class VectorSource:
    """How a job reads a vectors corpus: the key form, and where tokens get their ids
    (``model``'s tokenizer, or the ``vocab`` file when given), bounded by ``vocab_size``
    (the index's vocabulary). Small and picklable: read tasks load the vocabulary
    themselves, once per worker (`vocabulary`)."""

    keys: str = "tokens"
    model: str | None = None
    vocab: str | None = None
    vocab_size: int | None = None

    def vocabulary(self, storage_options: dict | None = None) -> Vocabulary:
        import json

        return _load_vocabulary(self.model, self.vocab, self.vocab_size,
                                json.dumps(storage_options or {}, sort_keys=True))


@lru_cache(maxsize=4)
def _load_vocabulary(model: str | None, vocab: str | None, size: int | None,
                     options_json: str) -> Vocabulary:
    import json

    if vocab is not None:
        loaded = Vocabulary.from_file(vocab, json.loads(options_json))
    elif model is not None:
        from pipeline.encode.models import resolve_model
        from pipeline.encode.tokens import load_tokenizer

        loaded = Vocabulary.from_tokenizer(load_tokenizer(resolve_model(model)))
    else:
        raise ValueError("a vectors corpus needs a vocabulary: pass --model or --vocab")
    if size is None or size == loaded.size:
        return loaded
    # The index's vocabulary (the query model's output) bounds every term id.
    return Vocabulary({t: i for t, i in loaded.token_to_id.items() if i < size}, size)


def vector_doc_id(record: Mapping[str, Any], fields: FieldMap) -> str:
    """The record's id, found and validated exactly as for a text record
    (`pipeline.data.records.parse_record`); text fields are not read (vectors are not encoded)."""
    if not isinstance(record, Mapping):
        raise BadRecord(f"record must be a JSON object, got {type(record).__name__}")
    ids_only = {f: record[f] for f in fields.id if f in record}
    doc_id, _ = parse_record({**ids_only, "\0text": ""}, FieldMap(fields.id, None, "\0text"))
    return doc_id


def parse_id_columns(table, vocab: Vocabulary) -> list[ParsedVector | None] | None:
    """Bulk `parse_vector` of a Parquet row group with ``indices`` + ``values`` list columns
    (numpy over the flat columns instead of Python per term: the read stage at millions of
    documents). Returns per row the vector (``doc_id`` unset), or None for a row the checks
    reject, which the caller parses on its own through `parse_vector` for its reason; None
    for a table not in that form (or with nulls inside the lists): parse every row."""
    import pyarrow as pa

    names = table.column_names
    if "indices" not in names or "values" not in names or "vector" in names or "tokens" in names:
        return None
    terms, weights = (table.column(c).combine_chunks() for c in ("indices", "values"))
    if not all(pa.types.is_list(a.type) or pa.types.is_large_list(a.type) for a in (terms, weights)) \
            or not pa.types.is_integer(terms.type.value_type) \
            or not (pa.types.is_integer(weights.type.value_type)
                    or pa.types.is_floating(weights.type.value_type)):
        return None
    ids_flat, values_flat = terms.flatten(), weights.flatten()
    if ids_flat.null_count or values_flat.null_count:
        return None
    n = len(terms)
    lengths = np.diff(terms.offsets.to_numpy()).astype(np.int64)
    if terms.null_count or weights.null_count or \
            not np.array_equal(lengths, np.diff(weights.offsets.to_numpy())):
        return None      # rare: parse row by row, for the reasons
    ids = ids_flat.to_numpy().astype(np.int64)
    values = values_flat.to_numpy().astype(np.float64)
    row_of = np.repeat(np.arange(n), lengths)
    bad = (ids < 0) | (ids >= vocab.size) | ~np.isfinite(values) | (values < 0)
    order = np.lexsort((ids, row_of))                   # ascending ids within each row
    ids, values, row_sorted = ids[order], values[order], row_of[order]
    dup = (row_sorted[1:] == row_sorted[:-1]) & (ids[1:] == ids[:-1])
    bad_rows = np.zeros(n, dtype=bool)
    bad_rows[row_of[bad]] = True
    bad_rows[row_sorted[1:][dup]] = True
    keep = values > 0                                   # zero weights are dropped
    starts = np.concatenate([[0], np.cumsum(lengths)])
    integer = pa.types.is_integer(weights.type.value_type)
    out: list[ParsedVector | None] = []
    for r in range(n):
        if bad_rows[r]:
            out.append(None)
            continue
        lo, hi = starts[r], starts[r + 1]
        k = keep[lo:hi]
        out.append(ParsedVector("", ids[lo:hi][k].astype(np.int32), values[lo:hi][k].astype(np.float32),
                                bool(integer and hi > lo)))
    return out


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
