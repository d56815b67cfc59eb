"""Typed, validated configuration of the indexing job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.catalog.gc import GC_MIN_AGE_S, KEEP_GENERATIONS
from pipeline.catalog.writer_lock import LOCK_TTL_S
from pipeline.data.corpus import FORMATS
from pipeline.data.vectors import VECTOR_KEYS, VectorSource, vocab_fingerprint
from pipeline.format.fields import FieldSpec, parse_schema

INDEX_KINDS = ("blocked", "exact")
BAD_RECORD_POLICIES = ("fail", "skip")

# Defaults, each defined once (the CLI and the re-indexing config use these names).
MODEL = "splade-tiny"
"""The project's reference model (field notes)."""
MAX_LENGTH = 256
"""Document truncation in tokens: the reference setting the effectiveness numbers use."""
QUERY_MAX_LENGTH = 64
"""Query truncation in tokens: the reference setting."""
ENCODE_BATCH_SIZE = 32
"""Documents per encoder forward pass: 32x256 tokens fits the vocabulary head's tiles in
~0.4 GiB on CPU and keeps a GPU busy without padding waste (length buckets)."""
SHARD_SIZE = 250_000
"""Target documents per shard: one build task, ~0.5 GiB of float32 postings at ~130 terms
per document; a billion documents make 4,000 shards."""
BLOCK_ROWS = 256
"""Documents per read block of a text corpus, the unit of resume: a kill loses at most a block
per read task in flight (256 documents to encode again), and a 1e9-document corpus stages
~4 M parts (large enough per object on S3)."""
VECTOR_BLOCK_ROWS = 2048
"""Documents per read block of a pre-encoded vectors corpus. Nothing is encoded, so a block
costs little to read again, while each staged part has a fixed cost (one atomic write with
fsync locally, one PUT on S3): at 300k documents, 256-row parts took 5x the staging-write
time of 2048-row parts (BENCHMARKS §15)."""


@dataclass(frozen=True)
class EncoderOptions:
    model: str | None = MODEL     # None only for a vectors corpus with a vocab file (no query model)
    max_length: int = MAX_LENGTH
    query_max_length: int = QUERY_MAX_LENGTH
    dtype: str = "auto"
    batch_size: int = ENCODE_BATCH_SIZE
    top_k: int | None = None      # keep at most this many terms per document
    threshold: float = 0.0        # drop weights <= threshold

    def __post_init__(self) -> None:
        if self.max_length < 8 or self.query_max_length < 4:
            raise ValueError("max_length must be >= 8 and query_max_length >= 4")
        if self.batch_size < 1:
            raise ValueError(f"encoder batch_size must be >= 1, got {self.batch_size}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")


@dataclass(frozen=True)
class ResourceOptions:
    """How the job uses the cluster. None means: decide from the cluster's resources."""

    address: str | None = None        # Ray address; None = connect to RAY_ADDRESS or start locally
    num_encoders: int | None = None   # encoder actor pool size
    encoder_cpus: float | None = None
    encoder_gpus: float | None = None
    tokenize_cpus: float = 0.25       # fractional: on 2-core machines whole CPUs deadlock the read
    build_cpus: float = 1.0
    read_cpus: float = 0.25


@dataclass(frozen=True)
class IndexJobConfig:
    corpus: str
    output: str
    format: str = "auto"
    id_field: str | None = None                  # None: _id, id, docid or doc_id
    title_field: str | None = "title"
    text_field: str = "text"
    shard_size: int = SHARD_SIZE
    block_rows: int | None = None                # None: BLOCK_ROWS, or VECTOR_BLOCK_ROWS for vectors
    values_dtype: str = "float32"                # postings value storage
    index_kind: str = "blocked"
    index_params: dict[str, Any] = field(default_factory=dict)   # BlockedIndexConfig overrides
    on_bad_record: str = "fail"
    keep_generations: int = KEEP_GENERATIONS
    gc_min_age_s: float = GC_MIN_AGE_S          # staging and uncommitted shards idle this long are removed
    lock_ttl_s: float = LOCK_TTL_S               # writer lock lifetime without renewal
    storage_options: dict[str, Any] = field(default_factory=dict)
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    resources: ResourceOptions = field(default_factory=ResourceOptions)
    # format "vectors" (pre-encoded): how keys name terms ("tokens" or decimal "ids"; records
    # with `indices` or `tokens` list columns say it themselves), and a vocab.txt that maps
    # tokens to ids instead of the model's tokenizer. encoder.model is then the query model.
    vector_keys: str = "tokens"
    vocab: str | None = None
    # Corpus fields kept per document, "NAME:TYPE" (`lsr index --field`; types in
    # `pipeline.format.fields`): staged with the row, written with its shard, recorded in the
    # manifest, and part of the document's content fingerprint.
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.block_rows is None:
            object.__setattr__(self, "block_rows",
                               VECTOR_BLOCK_ROWS if self.format == "vectors" else BLOCK_ROWS)
        parse_schema(self.fields)   # FieldsFormatError names a bad NAME:TYPE or a repeated name
        if self.vector_keys not in VECTOR_KEYS:
            raise ValueError(f"vector_keys must be one of {VECTOR_KEYS}, got {self.vector_keys!r}")
        if self.format == "vectors":
            if not self.encoder.model and not self.vocab:
                raise ValueError("--format vectors needs --model (its tokenizer's vocabulary, and "
                                 "the query encoder) or --vocab (a vocab.txt; then no query model)")
        elif not self.encoder.model:
            raise ValueError("a model is required to encode a text corpus")
        elif self.vocab is not None:
            raise ValueError("--vocab applies only to --format vectors")
        if self.shard_size < 1 or self.block_rows < 1:
            raise ValueError("shard_size and block_rows must be >= 1")
        if self.values_dtype not in ("float16", "float32"):
            raise ValueError(f"values_dtype must be float16 or float32, got {self.values_dtype!r}")
        if self.index_kind not in INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {self.index_kind!r}")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, "
                             f"got {self.on_bad_record!r}")
        if self.keep_generations < 1:
            raise ValueError(f"keep_generations must be >= 1, got {self.keep_generations}")
        if self.gc_min_age_s < 0:
            raise ValueError(f"gc_min_age_s must be >= 0, got {self.gc_min_age_s}")
        if self.lock_ttl_s <= 0:
            raise ValueError(f"lock_ttl_s must be > 0, got {self.lock_ttl_s}")

    @property
    def field_schema(self) -> tuple[FieldSpec, ...]:
        """The declared fields, parsed (`pipeline.format.fields.parse_schema`)."""
        return parse_schema(self.fields)

    @property
    def vectors(self) -> bool:
        """The corpus holds pre-encoded vectors: nothing is encoded."""
        return self.format == "vectors"

    def vector_source(self, vocab_size: int | None = None) -> VectorSource:
        return VectorSource(keys=self.vector_keys, model=self.encoder.model, vocab=self.vocab,
                            vocab_size=vocab_size)

    def output_fingerprint(self) -> str:
        """Hash of every setting that changes what the job writes (not how fast)."""
        # The vector settings count only for a vectors corpus (text jobs keep their plan ids).
        ignored = () if self.vectors else ("vector_keys", "vocab")
        # No kept fields: plan ids as before fields existed (a resumed run keeps its staging).
        ignored += () if self.fields else ("fields",)
        relevant = {k: v for k, v in asdict(self).items()
                    if k not in ("resources", "storage_options", "keep_generations", "gc_min_age_s",
                                 "lock_ttl_s", "output", *ignored)}
        if self.vectors and self.vocab is not None:
            # the file's contents, not its path, decide the term ids
            relevant["vocab"] = vocab_fingerprint(self.vocab, self.storage_options)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()
