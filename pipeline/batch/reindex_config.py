"""Typed, validated configuration of a re-indexing run.

Every setting that shapes the index defaults to what the live generation's manifest
recorded (encoder settings, corpus format and fields, kept fields, shard size, index kind
and parameters, stored value dtype), so `lsr reindex CORPUS INDEX` repeats the original
`lsr index` run on a new corpus snapshot. An override that changes the vectors (model,
lengths, pruning, dtype, value dtype) or the kept fields makes the run a full rebuild; one that changes only
the index (kind, parameters) rebuilds every shard's index from the stored vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.catalog.gc import GC_MIN_AGE_S, KEEP_GENERATIONS
from pipeline.catalog.writer_lock import LOCK_TTL_S
from pipeline.data.corpus import FORMATS
from pipeline.batch.config import (ENCODE_BATCH_SIZE, EncoderOptions, IndexJobConfig,
                                   ResourceOptions)
from pipeline.catalog import Manifest



@dataclass(frozen=True)
class EncoderOverrides:
    """Encoder settings to change; None keeps what the live generation recorded.

    `top_k=0` asks for no pruning (None already means "as recorded").
    """

    model: str | None = None
    max_length: int | None = None
    query_max_length: int | None = None
    dtype: str | None = None
    top_k: int | None = None
    threshold: float | None = None
    batch_size: int = ENCODE_BATCH_SIZE  # how, not what: never recorded, never a reason to rebuild

    def options(self, recorded: dict[str, Any]) -> EncoderOptions:
        """The encoder options of this run: overrides over the recorded settings."""
        def pick(name: str, default: Any) -> Any:
            value = getattr(self, name)
            return recorded.get(name, default) if value is None else value

        defaults = EncoderOptions()
        top_k = pick("top_k", defaults.top_k)
        return EncoderOptions(model=pick("model", defaults.model),
                              max_length=pick("max_length", defaults.max_length),
                              query_max_length=pick("query_max_length", defaults.query_max_length),
                              dtype=pick("dtype", defaults.dtype), top_k=top_k or None,
                              threshold=pick("threshold", defaults.threshold),
                              batch_size=self.batch_size)


@dataclass(frozen=True)
class ReindexConfig:
    """One re-indexing run of `corpus` (a new snapshot) into the index at `index`.

    None means "as the live generation recorded it" (see the module docstring).
    ``keep_generations``: generations garbage collection keeps (besides leased ones).
    ``gc_min_age_s``: staging of abandoned plans and shards of uncommitted generations are
    deleted only when nothing under them changed for this long (a job may still be writing).
    """

    corpus: str
    index: str
    full: bool = False
    keep_generations: int = KEEP_GENERATIONS
    gc_min_age_s: float = GC_MIN_AGE_S
    lock_ttl_s: float = LOCK_TTL_S
    on_bad_record: str = "fail"
    block_rows: int | None = None                # None: the job's default for the format
    shard_size: int | None = None
    format: str | None = None
    id_field: str | None = None
    title_field: str | None = None               # "" for none
    text_field: str | None = None
    index_kind: str | None = None
    index_params: dict[str, Any] = field(default_factory=dict)   # merged over the recorded ones
    values_dtype: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)
    resources: ResourceOptions = field(default_factory=ResourceOptions)
    vector_keys: str | None = None               # format vectors: key form, vocab file
    vocab: str | None = None
    fields: tuple[str, ...] | None = None        # kept fields NAME:TYPE; None: as recorded

    def __post_init__(self) -> None:
        if self.keep_generations < 1:
            raise ValueError(f"keep_generations must be >= 1, got {self.keep_generations}")
        if self.gc_min_age_s < 0:
            raise ValueError(f"gc_min_age_s must be >= 0, got {self.gc_min_age_s}")
        if self.encoder.top_k is not None and self.encoder.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no pruning), got {self.encoder.top_k}")
        # Everything else is validated by the IndexJobConfig it resolves to.

    def job_config(self, base: Manifest | None) -> IndexJobConfig:
        """The indexing-job configuration of this run, resolved against the live manifest."""
        corpus = base.corpus if base else {}
        fields = corpus.get("fields") or {}
        extra = base.extra if base else {}
        recorded_format = corpus.get("format")
        defaults = IndexJobConfig(corpus=self.corpus, output=self.index)
        title = fields.get("title", defaults.title_field) if self.title_field is None \
            else (self.title_field or None)
        params = dict(base.index.get("params") or {}) if base else {}
        kind = self.index_kind or (base.index.get("kind") if base else None) or defaults.index_kind
        if base and kind != base.index.get("kind"):
            params = {}  # parameters of another index kind do not carry over
        fmt = self.format or (recorded_format if recorded_format in FORMATS else "auto")
        encoder = self.encoder.options(base.encoder if base else {})
        recorded = base.encoder if base else {}
        vector_keys = self.vector_keys or recorded.get("vector_keys") or "tokens"
        vocab = None
        if fmt == "vectors":
            # Pre-encoded: the recorded query model (None when the index had a vocab file only).
            vocab = self.vocab or recorded.get("vocab")
            query_model = recorded.get("query_model") if recorded.get("run") is False \
                else recorded.get("model")
            encoder = replace(encoder, model=self.encoder.model or query_model)
        kept = tuple(f"{f['name']}:{f['type']}" for f in (base.fields if base else []))
        return IndexJobConfig(
            corpus=self.corpus, output=self.index, format=fmt,
            vector_keys=vector_keys, vocab=vocab,
            fields=kept if self.fields is None else tuple(self.fields),
            id_field=self.id_field or fields.get("id"), title_field=title,
            text_field=self.text_field or fields.get("text") or defaults.text_field,
            shard_size=self.shard_size or extra.get("shard_size") or defaults.shard_size,
            block_rows=self.block_rows,
            values_dtype=self.values_dtype or extra.get("values_dtype") or defaults.values_dtype,
            index_kind=kind, index_params={**params, **self.index_params},
            on_bad_record=self.on_bad_record, keep_generations=self.keep_generations,
            gc_min_age_s=self.gc_min_age_s, lock_ttl_s=self.lock_ttl_s,
            storage_options=self.storage_options,
            encoder=encoder, resources=self.resources,
        )
