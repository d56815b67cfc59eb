"""Corpus discovery, chunking and strict parsing: every record once, in order, errors named."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.corpus import RUN_GRAIN, SAMPLE_BYTES, describe_position, discover, plan_chunks, read_chunk
from pipeline.data.records import BadRecord, FieldMap, document_text, parse_record


def _write_jsonl(path, n, bad=None):
    bad = bad or {}
    with open(path, "wb") as f:
        for i in range(n):
            if i in bad:
                f.write(bad[i])
            else:
                f.write((json.dumps({"_id": f"d{i}", "title": f"title {i}",
                                     "text": f"text of document {i} " * (i % 7 + 1)}) + "\n").encode())


def _records(chunks, fields=FieldMap()):
    return [r for c in chunks for r in read_chunk(c, fields)]


@pytest.mark.parametrize("shard_size", [1, 7, 50, 10_000])
def test_chunks_cover_every_line_once_in_order(tmp_path, shard_size):
    path = tmp_path / "c.jsonl"
    _write_jsonl(path, 200)
    chunks = plan_chunks(discover(str(path)), shard_size)
    records = _records(chunks)
    assert [r.doc_id for r in records] == [f"d{i}" for i in range(200)]
    assert all(r.error is None for r in records)
    if shard_size >= 200:
        assert len(chunks) == 1


def test_chunks_are_equal_parts_with_no_small_remainder(tmp_path):
    """A file over the sample (1 MiB), 8,060 records at 2,000 a shard (estimated from the
    sample within the 5% slack): four chunks of about 2,015 (equal bytes; the records vary in
    length), not four of about 2,000 and one of 60.
    Records counted exactly, in a file within the sample and in gzip: 1,001 at 500 are three
    runs of 333-334."""
    path = tmp_path / "c.jsonl"
    _write_jsonl(path, 8060)
    assert path.stat().st_size > SAMPLE_BYTES
    counts = [len(list(read_chunk(c, FieldMap()))) for c in plan_chunks(discover(str(path)), 2000)]
    assert len(counts) == 4 and sum(counts) == 8060 and min(counts) >= 1800, counts
    _write_jsonl(path, 1001)
    counts = [len(list(read_chunk(c, FieldMap()))) for c in plan_chunks(discover(str(path)), 500)]
    assert counts == [333, 334, 334], counts
    gz = tmp_path / "g.jsonl.gz"
    _write_jsonl(path, 1001)
    gz.write_bytes(gzip.compress(path.read_bytes()))
    counts = [len(list(read_chunk(c, FieldMap()))) for c in plan_chunks(discover(str(gz)), 500)]
    assert counts == [333, 334, 334], counts
    # over RUN_GRAIN records a shard, bounds fall every shard_size // RUN_GRAIN records (2 here)
    shard_size = 2 * RUN_GRAIN + 1
    _write_jsonl(path, 1201)
    gz.write_bytes(gzip.compress(path.read_bytes()))
    counts = [len(list(read_chunk(c, FieldMap()))) for c in plan_chunks(discover(str(gz)), shard_size)]
    assert len(counts) == 3 and sum(counts) == 1201, counts
    assert max(counts) - min(counts) <= 2 and max(counts) <= shard_size, counts


def test_bad_records_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    bad = {
        10: b'{"_id": "x", "text": "bad \xff bytes"}\n',
        20: b'{"_id": "y", "text": \n',
        30: b'{"text": "no id"}\n',
        40: b'{"_id": "z", "text": 12}\n',
        50: b'{"_id": " e", "title": "t", "text": "x"}\n',
        60: b'["not", "an", "object"]\n',
        70: b'{"_id": "s", "text": "lone \\ud800 surrogate"}\n',
    }
    _write_jsonl(path, 100, bad)
    records = _records(plan_chunks(discover(str(path)), 9))
    errors = {int(r.error.source.rsplit(" ", 1)[1]): r.error.reason for r in records if r.error}
    assert sorted(errors) == [11, 21, 31, 41, 51, 61, 71]  # 1-based line numbers
    assert "invalid UTF-8" in errors[11]
    assert "not valid JSON" in errors[21]
    assert "missing id" in errors[31]
    assert "must be a string" in errors[41]
    assert "id ' e' has leading or trailing whitespace" in errors[51]
    assert "JSON object" in errors[61]
    assert "not valid Unicode" in errors[71]
    assert len([r for r in records if r.error is None]) == 93


def test_bom_empty_documents_verbatim_ids_and_readable_reasons(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "x"}\n'          # a BOM at file start is fine
                     b'{"_id": "e", "title": " ", "text": ""}\n'          # an empty document
                     b'{"_id": "c", "text": "tab\there"}\n'               # a raw control character
                     b'{"_id": "d ", "text": "y"}\n'
                     b'\xef\xbb\xbf{"_id": "f", "text": "z"}\n')        # a BOM elsewhere is not
    records = _records(plan_chunks(discover(str(path)), 10))
    assert [(r.doc_id, r.text) for r in records[:2]] == [("a", "x"), ("e", "")]
    reasons = {r.error.source.rsplit(" ", 2)[-1]: r.error.reason for r in records if r.error}
    assert reasons["3"] == "not valid JSON (Invalid control character at column 26)"
    assert "'d ' has leading or trailing whitespace" in reasons["4"]
    assert reasons["5"].startswith("not valid JSON (Unexpected UTF-8 BOM") or "column 1" in reasons["5"]
    assert parse_record({"_id": "x", "title": "", "text": "  "}) == ("x", "")


def test_gzip_file_is_split_by_record_count(tmp_path):
    plain = tmp_path / "c.jsonl"
    _write_jsonl(plain, 100, {40: b"\n", 41: b'{"_id": "d41", "text": "bad \xff"}\n'})
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    files = discover(str(path))
    chunks = plan_chunks(files, 7)
    assert len(chunks) == 15 and chunks[0].start == 0       # 99 records (one line is blank)
    records = _records(chunks)
    assert [r.doc_id for r in records if r.error is None] == [f"d{i}" for i in range(100) if i not in (40, 41)]
    bad = [r for r in records if r.error]
    assert len(bad) == 1 and bad[0].error.source.endswith("c.jsonl.gz line 42")
    assert describe_position(files[0], records[50].offset) == f"{path} line {52}"


def test_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n\n   \n{"_id": "b", "text": "y"}\n')
    assert [r.doc_id for r in _records(plan_chunks(discover(str(path)), 1))] == ["a", "b"]


def test_gzip_and_parquet_and_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    with gzip.open(folder / "a.jsonl.gz", "wt") as f:
        for i in range(5):
            f.write(json.dumps({"id": i, "text": f"gz {i}"}) + "\n")
    table = pa.table({"id": [f"p{i}" for i in range(30)], "title": ["t"] * 30,
                      "text": [f"parquet {i}" for i in range(30)]})
    pq.write_table(table, folder / "b.parquet", row_group_size=4)
    files = discover(str(folder))
    assert [f.format for f in files] == ["jsonl", "parquet"]
    chunks = plan_chunks(files, 10)
    assert sum(c.file.format == "parquet" for c in chunks) == 3  # 8 row groups, >= 10 rows each
    ids = [r.doc_id for r in _records(chunks)]
    assert ids == [str(i) for i in range(5)] + [f"p{i}" for i in range(30)]


def test_beir_folder_uses_corpus_jsonl(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "body"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "query"}\n')
    files = discover(str(tmp_path))
    assert len(files) == 1 and files[0].url.endswith("corpus.jsonl")
    assert _records(plan_chunks(files, 10))[0].text == "T body"


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        discover(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no JSONL or Parquet"):
        discover(str(tmp_path))


def test_position_of_a_record(tmp_path):
    path = tmp_path / "c.jsonl"
    _write_jsonl(path, 30)
    files = discover(str(path))
    rec = [r for r in _records(plan_chunks(files, 4)) if r.doc_id == "d17"][0]
    assert describe_position(files[0], rec.offset) == f"{path} line 18"


def test_parse_record_fields_and_text():
    assert parse_record({"_id": 7, "title": "A", "text": "b "}) == ("7", "A b")
    assert parse_record({"docid": "x", "body": "t"}, FieldMap.from_options(text_field="body")) == ("x", "t")
    assert document_text(None, "  x ") == "x"
    with pytest.raises(BadRecord, match="id field '_id' must be a string or integer"):
        parse_record({"_id": True, "text": "x"})
    with pytest.raises(BadRecord, match="missing text"):
        parse_record({"_id": "1", "title": "x"})
    # U+FFFD is ordinary text (real collections contain it); invalid bytes are caught when decoding.
    assert parse_record({"_id": "1", "text": "caf\ufffd"})[1] == "caf\ufffd"
