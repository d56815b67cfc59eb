"""Pre-encoded vector records: parsing and validation (`pipeline.data.vectors`).

The reference for the accepted shapes is Anserini's JsonVectorCollection (a `vector` object of
token -> weight) and parallel term/weight list columns; each bad case names its reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.records import BadRecord
from pipeline.data.vectors import Vocabulary, loads_vector_line, parse_vector

VOCAB = Vocabulary.from_tokens(["[PAD]", "heart", "disease", "##ing", "cause", "2020"])


def test_anserini_tokens_map_through_the_vocabulary_sorted_by_term_id():
    rec = loads_vector_line(json.dumps({"id": "d1", "contents": "x",
                                        "vector": {"disease": 0.5, "heart": 1.25, "##ing": 3}}))
    v = parse_vector(rec, "d1", vocab=VOCAB)
    assert v.indices.tolist() == [1, 2, 3] and v.indices.dtype == np.int32
    np.testing.assert_array_equal(v.values, np.float32([1.25, 0.5, 3.0]))
    assert not v.integer_weights


def test_quantised_impacts_are_numbers_and_reported():
    v = parse_vector({"vector": {"heart": 12, "cause": 3}}, "d", vocab=VOCAB)
    assert v.integer_weights and v.values.tolist() == [12.0, 3.0]


def test_term_id_keys_and_list_columns():
    v = parse_vector({"vector": {"5": 0.1, "1": 0.2}}, "d", keys="ids", vocab=VOCAB)
    assert v.indices.tolist() == [1, 5]
    w = parse_vector({"indices": [4, 2], "values": [0.3, 0.7]}, "d", vocab=VOCAB)
    assert w.indices.tolist() == [2, 4] and w.values.tolist() == pytest.approx([0.7, 0.3])
    t = parse_vector({"tokens": ["cause", "heart"], "values": [1.0, 2.0]}, "d", keys="ids",
                     vocab=VOCAB)   # the column names the form, whatever `keys` says
    assert t.indices.tolist() == [1, 4]


def test_zero_weights_are_dropped_and_an_empty_vector_is_valid():
    v = parse_vector({"vector": {"heart": 0, "cause": 0.0}}, "d", vocab=VOCAB)
    assert v.indices.size == 0 and v.values.size == 0


@pytest.mark.parametrize("record, keys, reason", [
    ({"vector": {"aorta": 1.0}}, "tokens", "unknown token 'aorta'"),
    ({"vector": {"heart": -0.5}}, "tokens", "weight of 'heart' is negative"),
    ({"vector": {"heart": float("nan")}}, "tokens", "is not finite"),
    ({"vector": {"heart": float("inf")}}, "tokens", "is not finite"),
    ({"vector": {"heart": "1.0"}}, "tokens", "must be a number, got str"),
    ({"vector": {"heart": True}}, "tokens", "must be a number, got bool"),
    ({"vector": {"6": 1.0}}, "ids", "term id 6 is outside the vocabulary of size 6"),
    ({"vector": {"x1": 1.0}}, "ids", "term 'x1' is not a term id"),
    ({"indices": [1, 1], "values": [0.1, 0.2]}, "ids", "term 1 is given twice"),
    ({"indices": [1, 2], "values": [0.1]}, "ids", "2 indices but 1 values"),
    ({"vector": [1, 2]}, "tokens", None),
    ({"text": "no vector here"}, "tokens", "no vector"),
])
def test_bad_vectors_are_rejected_with_a_reason(record, keys, reason):
    with pytest.raises(BadRecord) as err:
        parse_vector(record, "d", keys=keys, vocab=VOCAB, source="c.jsonl line 7")
    assert str(err.value).startswith("c.jsonl line 7: ")
    if reason:
        assert reason in str(err.value)


def test_duplicate_token_in_a_json_object_is_caught_not_silently_collapsed():
    rec = loads_vector_line('{"id": "d", "vector": {"heart": 1.0, "heart": 2.0}}')
    with pytest.raises(BadRecord, match="given twice"):
        parse_vector(rec, "d", vocab=VOCAB)


def test_tokens_without_a_vocabulary_say_what_to_pass():
    with pytest.raises(BadRecord, match="pass --model or --vocab"):
        parse_vector({"vector": {"heart": 1.0}}, "d")


def test_vocab_file_line_numbers_are_ids(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\nheart\ndisease\n", encoding="utf-8")
    vocab = Vocabulary.from_file(str(path))
    assert vocab.size == 3 and vocab.token_to_id["disease"] == 2


def test_export_writes_every_stored_vector_once(tmp_path):
    import scipy.sparse as sp
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.testing.direct_writer import write_generation

    rng = np.random.default_rng(3)
    vectors = sp.random(40, 300, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    vectors.data = np.abs(vectors.data) + np.float32(0.01)
    ids = [f"doc-{i}" for i in range(40)]
    write_generation(str(tmp_path / "idx"), 1, ids, vectors, n_shards=3,
                     encoder_settings={"model": "none"}, index_kind="exact")
    out = tmp_path / "vectors.jsonl"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "idx"), str(out)])
    assert result.exit_code == 0, result.output
    lines = [loads_vector_line(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == ids
    got = sp.vstack([sp.csr_matrix((parse_vector(r, r["id"], keys="ids").values,
                                    parse_vector(r, r["id"], keys="ids").indices,
                                    [0, len(r["vector"])]), shape=(1, 300)) for r in lines])
    np.testing.assert_array_equal(got.toarray(), vectors.toarray())


def test_bulk_id_columns_agree_with_row_by_row_parsing():
    """`parse_id_columns` (numpy over a Parquet row group) accepts exactly the rows
    `parse_vector` accepts, with the same vectors; the rows it rejects are left to it."""
    import pyarrow as pa

    from pipeline.data.vectors import parse_id_columns

    rng = np.random.default_rng(3)
    rows_i, rows_v = [], []
    for r in range(300):
        k = int(rng.integers(0, 6))
        ids = rng.integers(-1, VOCAB.size + 1, size=k).tolist() if r % 7 == 0 else \
            rng.choice(VOCAB.size, size=min(k, VOCAB.size), replace=False).tolist()
        vals = rng.choice([0.0, 0.5, 1.25, -1.0, float("nan"), 3.0], size=len(ids)).tolist() \
            if r % 5 == 0 else rng.random(len(ids)).astype(np.float32).tolist()
        rows_i.append(ids)
        rows_v.append(vals)
    for value_type in (pa.float32(), pa.float64()):
        table = pa.table({"id": [f"d{i}" for i in range(300)], "indices": rows_i,
                          "values": pa.array(rows_v, pa.list_(value_type))})
        bulk = parse_id_columns(table, VOCAB)
        assert bulk is not None and sum(b is None for b in bulk) > 20
        for r, got in enumerate(bulk):
            record = {"indices": rows_i[r], "values": rows_v[r]}
            try:
                want = parse_vector(record, f"d{r}", vocab=VOCAB)
            except BadRecord:
                assert got is None, r
                continue
            assert got is not None, r
            assert got.indices.tolist() == want.indices.tolist()
            assert got.values.tolist() == want.values.tolist()
            assert got.integer_weights == want.integer_weights
    ints = pa.table({"indices": [[4, 1]], "values": pa.array([[3, 7]], pa.list_(pa.int32()))})
    (v,) = parse_id_columns(ints, VOCAB)
    assert v.integer_weights and v.values.tolist() == [7.0, 3.0]
    # Not the id-column form: None, parse every row.
    assert parse_id_columns(pa.table({"tokens": [["heart"]], "values": [[1.0]]}), VOCAB) is None
