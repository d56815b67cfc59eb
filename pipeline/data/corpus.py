"""Corpus files: discovery, splitting into shard-sized chunks, and strict parsing.

A corpus is a JSONL file, a Parquet file, a folder of them, or a BEIR folder (its
`corpus.jsonl`), on any fsspec URL. It is cut into chunks at line (JSONL) or row-group
(Parquet) boundaries; one chunk becomes one shard, so shards are contiguous runs of the
corpus and the same input always cuts the same way (which is what makes resume work).

Bytes are decoded as strict UTF-8 here; `pipeline.data.records` validates the fields.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
from array import array
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator

from pipeline.data.jsonl import decode_line, parse_json_line
from pipeline.data.records import BadRecord, FieldMap, parse_record
from pipeline.objstore import resolve, with_retries

if TYPE_CHECKING:
    from pipeline.data.vectors import ParsedVector, VectorSource

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
FORMATS = ("auto", "jsonl", "parquet", "beir", "vectors")
"""Corpus formats a job accepts. "vectors": pre-encoded sparse vectors (`pipeline.data.vectors`)
in JSONL or Parquet files, found like any JSONL/Parquet corpus and read by `read_vector_chunk`."""


@dataclass(frozen=True)
class CorpusFile:
    url: str
    format: str          # "jsonl" or "parquet"
    size: int
    version: str         # etag or mtime: changes when the file changes

    @property
    def compressed(self) -> bool:
        return self.url.endswith(".gz")


@dataclass(frozen=True)
class Chunk:
    """A contiguous run of one file: bytes [start, end) of JSONL (of the decompressed stream
    for .gz), or row groups [start, end) of Parquet."""

    file: CorpusFile
    start: int
    end: int

    def to_json(self) -> dict:
        return {"file": asdict(self.file), "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, obj: dict) -> "Chunk":
        return cls(CorpusFile(**obj["file"]), obj["start"], obj["end"])


def _format_of(name: str) -> str | None:
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _file_version(info: dict) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def discover(url: str, fmt: str = "auto", storage_options: dict | None = None) -> list[CorpusFile]:
    """The corpus files under `url`, sorted by path; raises with a clear message if none."""
    if fmt not in FORMATS:
        raise ValueError(f"corpus format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "vectors":
        fmt = "files"      # JSONL and Parquet files by suffix; a corpus.jsonl is not a BEIR folder
    loc = resolve(url, storage_options)
    fs = loc.fs
    fs.invalidate_cache(loc.path)
    if not with_retries(lambda: fs.exists(loc.path), what=f"stat {url}"):
        raise FileNotFoundError(f"corpus not found: {url}")
    if fs.isdir(loc.path):
        beir = loc.path.rstrip("/") + "/corpus.jsonl"
        if fmt in ("auto", "beir") and fs.exists(beir):
            paths = [beir]
        elif fmt == "beir":
            raise FileNotFoundError(f"{url} is not a BEIR folder (no corpus.jsonl)")
        else:
            paths = sorted(p for p in fs.find(loc.path) if _format_of(p) is not None
                           and (fmt in ("auto", "files") or _format_of(p) == fmt))
            if not paths:
                raise FileNotFoundError(f"no JSONL or Parquet files under {url}")
    else:
        paths = [loc.path]
    files = []
    for path in paths:
        kind = _format_of(path) if fmt in ("auto", "beir", "files") else fmt
        if kind is None:
            raise ValueError(f"cannot tell the format of {path}: use --format jsonl|parquet")
        info = fs.info(path)
        file_url = path if loc.is_local else f"{fs.unstrip_protocol(path)}"
        files.append(CorpusFile(url=file_url, format=kind, size=int(info.get("size") or 0),
                                version=_file_version(info)))
    return files


def corpus_fingerprint(files: list[CorpusFile]) -> str:
    """Identity of a corpus snapshot: its files, sizes and versions."""
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps(asdict(f), sort_keys=True).encode())
    return h.hexdigest()


SAMPLE_BYTES = 1 << 20
"""Bytes of a plain JSONL file read at plan time: its mean record length, or the whole file."""


RUN_GRAIN = 256
"""`_equal_runs` keeps one offset every ``shard_size // RUN_GRAIN`` records, so its memory grows
with the number of chunks, not of records; runs are equal to within that many records."""


def _equal_runs(f: CorpusFile, lines, shard_size: int) -> list[Chunk]:
    """Chunks of `f` from one pass over its lines (bytes, as read): the fewest runs of about
    equal numbers of records (non-blank lines), at most `shard_size` each (plus up to
    1/`RUN_GRAIN` of it when that is over one record), each ending after its last record."""
    every = max(1, shard_size // RUN_GRAIN)
    ends = array("q")           # offset just past records every, 2 * every, ...
    records = offset = 0
    for line in lines:
        offset += len(line)
        if line.strip():
            records += 1
            if records % every == 0:
                ends.append(offset)
    n = chunk_count(records, shard_size)
    bounds = [0] + [ends[(records * i // n) // every - 1] for i in range(1, n)] + [offset]
    return [Chunk(f, a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def chunk_count(records: float, shard_size: int, slack: float = 0.0) -> int:
    """How many equal chunks `records` records make at most `shard_size` each; an estimated
    count may exceed a whole number of chunks by ``slack`` of a chunk before one is added."""
    return max(1, math.ceil(records / shard_size - slack))


def plan_chunks(files: list[CorpusFile], shard_size: int,
                storage_options: dict | None = None) -> list[Chunk]:
    """Cut files into chunks of about `shard_size` records each (never across files).

    A file is cut into equal parts, as few as hold at most `shard_size` records each, so no
    chunk is a small remainder (1,500 records at 500 are three chunks of 500, not three
    of 496 and one of 12):
    JSONL up to `SAMPLE_BYTES`: read whole here and cut into equal runs of records
    (`_equal_runs`).
    Larger JSONL: equal byte ranges, counted from the mean record length of the first
    `SAMPLE_BYTES`; that estimate may be 5% over a whole number of chunks before one is added.
    Gzip JSONL: decompressed once here, its records (non-blank lines) counted and cut into
    equal runs (`_equal_runs`) at decompressed byte offsets; each read task decompresses from
    the start of the file up to its chunk (gzip has no random access). Parquet: consecutive row
    groups.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    chunks: list[Chunk] = []
    for f in files:
        loc = resolve(f.url, storage_options)
        if f.format == "parquet":
            import pyarrow.parquet as pq

            with loc.fs.open(loc.path, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            start, rows = 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= shard_size:
                    chunks.append(Chunk(f, start, g + 1))
                    start, rows = g + 1, 0
            if start < meta.num_row_groups or not chunks or chunks[-1].file != f:
                chunks.append(Chunk(f, start, meta.num_row_groups))
        elif f.size == 0:
            chunks.append(Chunk(f, 0, 0))
        elif f.compressed:
            with loc.fs.open(loc.path, "rb") as raw, gzip.open(raw) as stream:
                chunks.extend(_equal_runs(f, stream, shard_size))
        else:
            with loc.fs.open(loc.path, "rb") as raw:
                head = raw.read(SAMPLE_BYTES)
            if len(head) >= f.size:
                chunks.extend(_equal_runs(f, io.BytesIO(head), shard_size))
                continue
            lines = [line for line in head.split(b"\n")[:-1] if line.strip()] or [head]
            per_record = max(1.0, sum(len(x) + 1 for x in lines) / len(lines))
            n = chunk_count(f.size / per_record, shard_size, slack=0.05)
            # n <= ceil(f.size / per_record) <= f.size bytes: no range is empty
            bounds = [f.size * i // n for i in range(n + 1)]
            chunks.extend(Chunk(f, a, b) for a, b in zip(bounds[:-1], bounds[1:]))
    return chunks


def sample_texts(files: list[CorpusFile], fields: FieldMap, n: int,
                 storage_options: dict | None = None) -> list[str]:
    """The texts of the first `n` valid, non-empty records of the corpus (plan-time estimates)."""
    out: list[str] = []
    for f in files:
        chunk = Chunk(f, 0, 1 if f.format == "parquet" else 1 << 62)
        for record in read_chunk(chunk, fields, storage_options):
            if record.error is None and record.text:
                out.append(record.text)
                if len(out) >= n:
                    return out
    return out


@dataclass
class RawRecord:
    """One record of a chunk: validated (doc_id, text) or the reason it was rejected."""

    offset: int                 # byte offset of the line (JSONL) or row index (Parquet)
    doc_id: str | None
    text: str | None
    error: BadRecord | None
    extra: Any = None           # what the reader's `extra` made of the record (kept fields)


def _iter_jsonl_lines(chunk: Chunk, storage_options: dict | None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for every line that starts inside [start, end)."""
    loc = resolve(chunk.file.url, storage_options)
    with loc.fs.open(loc.path, "rb") as raw:
        stream = gzip.open(raw) if chunk.file.compressed else raw
        offset = 0
        if chunk.start > 0:
            # The line containing byte start-1 belongs to the previous chunk.
            stream.seek(chunk.start - 1)
            offset = chunk.start - 1
            head = stream.readline()
            offset += len(head)
        while offset < chunk.end:
            line = stream.readline()
            if not line:
                break
            yield offset, line
            offset += len(line)


def line_number(url: str, offset: int, storage_options: dict | None = None) -> int:
    """1-based line number of the byte `offset` in a (possibly gzip) JSONL file."""
    loc = resolve(url, storage_options)
    count, seen = 1, 0
    with loc.fs.open(loc.path, "rb") as raw:
        stream = gzip.open(raw) if url.endswith(".gz") else raw
        while seen < offset:
            block = stream.read(min(1 << 22, offset - seen))
            if not block:
                break
            count += block.count(b"\n")
            seen += len(block)
    return count


def line_numbers(url: str, offsets: list[int], storage_options: dict | None = None) -> dict[int, int]:
    """1-based line numbers of many byte offsets of one (possibly gzip) JSONL file, in one pass."""
    loc = resolve(url, storage_options)
    out: dict[int, int] = {}
    count, seen = 1, 0
    with loc.fs.open(loc.path, "rb") as raw:
        stream = gzip.open(raw) if url.endswith(".gz") else raw
        for offset in sorted(set(offsets)):
            while seen < offset:
                block = stream.read(min(1 << 22, offset - seen))
                if not block:
                    break
                count += block.count(b"\n")
                seen += len(block)
            out[offset] = count
    return out


def describe_positions(file: CorpusFile, offsets: list[int],
                       storage_options: dict | None = None) -> dict[int, str]:
    """`describe_position` of many offsets of one file, reading it once."""
    if file.format != "jsonl":
        return {o: f"{file.url} row {o + 1}" for o in offsets}
    return {o: f"{file.url} line {n}" for o, n in line_numbers(file.url, offsets, storage_options).items()}


def describe_position(file: CorpusFile, offset: int, storage_options: dict | None = None) -> str:
    if file.format == "jsonl":
        return f"{file.url} line {line_number(file.url, offset, storage_options)}"
    return f"{file.url} row {offset + 1}"


def read_chunk(chunk: Chunk, fields: FieldMap = FieldMap(),
               storage_options: dict | None = None, extra=None,
               extra_columns: tuple[str, ...] = ()) -> Iterator[RawRecord]:
    """Parse a chunk strictly; bad records come back with `error` set, in corpus order.

    `extra(record)` (optional) is applied to every valid record; its result is the record's
    `extra`, and a ``ValueError`` it raises makes the record bad, with that reason (the jobs
    check the kept fields this way). `extra_columns`: the corpus columns `extra` reads.
    """
    def parse(obj) -> tuple[str, str, Any]:
        doc_id, text = parse_record(obj, fields)
        return doc_id, text, (extra(obj) if extra is not None else None)

    for offset, parsed, error in _parsed_records(chunk, parse, storage_options):
        if error is None:
            yield RawRecord(offset, parsed[0], parsed[1], None, parsed[2])
        else:
            yield RawRecord(offset, None, None, error)


@dataclass
class VectorRecord:
    """One record of a vectors chunk: its id and validated vector, or the reason it was rejected."""

    offset: int                 # byte offset of the line (JSONL) or row index (Parquet)
    doc_id: str | None
    vector: "ParsedVector | None"
    error: BadRecord | None
    extra: Any = None           # as `RawRecord.extra`


def read_vector_chunk(chunk: Chunk, fields: FieldMap, source: "VectorSource",
                      storage_options: dict | None = None, extra=None,
                      extra_columns: tuple[str, ...] = ()) -> Iterator[VectorRecord]:
    """Parse a chunk of a pre-encoded vectors corpus strictly (`pipeline.data.vectors`); bad
    records come back with `error` set, in corpus order. Text fields are ignored. `extra`,
    `extra_columns`: as `read_chunk`'s."""
    from pipeline.data.vectors import loads_vector_line, parse_vector, vector_doc_id

    from pipeline.data.vectors import parse_id_columns

    vocab = source.vocabulary(storage_options)

    def parse(obj, checked: "ParsedVector | None" = None) -> tuple[str, "ParsedVector", Any]:
        doc_id = vector_doc_id(obj, fields)
        if checked is not None:           # validated in bulk (`parse_id_columns`)
            checked.doc_id = doc_id
            vector = checked
        else:
            vector = parse_vector(obj, doc_id, keys=source.keys, vocab=vocab)
        return doc_id, vector, (extra(obj) if extra is not None else None)

    def bulk(table):
        return parse_id_columns(table, vocab), [c for c in table.column_names
                                                if c in fields.id or c in extra_columns]

    for offset, parsed, error in _parsed_records(chunk, parse, storage_options, loads_vector_line,
                                                 bulk=bulk):
        if error is None:
            yield VectorRecord(offset, parsed[0], parsed[1], None, parsed[2])
        else:
            yield VectorRecord(offset, None, None, error)


def _parsed_records(chunk: Chunk, parse, storage_options: dict | None, loads=None, bulk=None):
    """(offset, parse(record), None) or (offset, None, BadRecord naming file and line or row)
    for every record of a chunk, in corpus order. `loads`: JSON text -> record (JSONL only;
    default `json.loads` through the one JSONL parser). `bulk` (Parquet only): a row group ->
    (per row a pre-checked value passed on as `parse(record, value)`, or None; the columns
    `parse` then needs), or (None, _) to parse every row of that group in full."""
    if chunk.file.format == "parquet":
        yield from _parsed_parquet_rows(chunk, parse, storage_options, bulk)
        return
    first_line: int | None = None   # line number of the chunk's first line, counted on first need
    first_offset = 0
    lines_read = 0
    for offset, raw in _iter_jsonl_lines(chunk, storage_options):
        if lines_read == 0:
            first_offset = offset
        lines_read += 1
        if not raw.strip():
            continue  # blank lines are not records
        try:
            if loads is None:
                obj = parse_json_line(raw, at_file_start=offset == 0)
            else:
                obj = loads(decode_line(raw, at_file_start=offset == 0))
            yield offset, parse(obj), None
        except ValueError as exc:
            if first_line is None:
                first_line = 1 if first_offset == 0 else \
                    line_number(chunk.file.url, first_offset, storage_options)
            reason = exc.reason if isinstance(exc, BadRecord) else str(exc)
            yield offset, None, BadRecord(
                reason, source=f"{chunk.file.url} line {first_line + lines_read - 1}",
                record=raw[:200].decode("utf-8", "replace"))


def _parsed_parquet_rows(chunk: Chunk, parse, storage_options: dict | None, bulk=None):
    import pyarrow.parquet as pq

    loc = resolve(chunk.file.url, storage_options)
    with loc.fs.open(loc.path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        row = sum(pf.metadata.row_group(g).num_rows for g in range(chunk.start))
        for g in range(chunk.start, chunk.end):
            table = pf.read_row_group(g)
            checked, columns = bulk(table) if bulk is not None else (None, None)
            if checked is None:
                pairs = zip(table.to_pylist(), [None] * table.num_rows)
            else:   # rows the bulk check passed need only `columns`; the others are parsed whole
                light = table.select(columns).to_pylist()
                pairs = ((light[i] if c is not None else table.slice(i, 1).to_pylist()[0], c)
                         for i, c in enumerate(checked))
            for record, pre in pairs:
                try:
                    yield row, (parse(record) if pre is None else parse(record, pre)), None
                except BadRecord as exc:
                    yield row, None, BadRecord(
                        exc.reason, source=f"{chunk.file.url} row {row + 1}", record=None)
                row += 1
