"""Fields (`pipeline.format.fields`) and the filter language (`pipeline.search.filters`).

The filter masks are compared with a brute-force evaluation over the records as Python dicts,
written here from the language's documented semantics (OpenSearch-style term/terms/range/
exists/and/or/not, an absent value never matching term/terms/range).
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from pipeline.format.fields import (FieldSpec, FieldsFormatError, build_columns, extract_fields,
                                    parse_schema, read_fields, write_fields)
from pipeline.objstore import resolve
from pipeline.search.filters import FilterError, compile_filter

SCHEMA = parse_schema(["lang:keyword", "year:int", "score:float", "open:bool", "meta:stored"])


def _records(n=400, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = {}
        if rng.random() < 0.9:
            r["lang"] = rng.choice(["en", "de", "fr", "é中"])
        if rng.random() < 0.8:
            r["year"] = rng.randint(1990, 2025)
        if rng.random() < 0.8:
            r["score"] = rng.uniform(-1, 1)
        if rng.random() < 0.7:
            r["open"] = rng.random() < 0.5
        if rng.random() < 0.5:
            r["meta"] = {"i": i, "tags": ["a", "b"][: i % 3]}
        out.append(r)
    return out


def _brute(expr, rec) -> bool:
    (op, arg), = expr.items()
    if op == "and":
        return all(_brute(c, rec) for c in arg)
    if op == "or":
        return any(_brute(c, rec) for c in arg)
    if op == "not":
        return not _brute(arg, rec)
    if op == "exists":
        name = arg["field"] if isinstance(arg, dict) else arg
        return rec.get(name) is not None
    (name, value), = arg.items()
    have = rec.get(name)
    if have is None:
        return False
    if op == "term":
        return have == value
    if op == "terms":
        return have in value
    ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b,
           "lte": lambda a, b: a <= b}
    return all(ops[k](have, v) for k, v in value.items())


EXPRESSIONS = [
    {"term": {"lang": "en"}},
    {"term": {"lang": "é中"}},
    {"term": {"lang": "xx"}},
    {"terms": {"lang": ["de", "fr"]}},
    {"term": {"year": 2020}},
    {"term": {"open": False}},
    {"range": {"year": {"gte": 2000, "lt": 2010}}},
    {"range": {"score": {"gt": 0.25}}},
    {"exists": "score"},
    {"exists": {"field": "open"}},
    {"not": {"term": {"lang": "en"}}},
    {"and": [{"term": {"lang": "en"}}, {"range": {"year": {"lte": 2005}}}]},
    {"or": [{"term": {"open": True}}, {"not": {"exists": "year"}}]},
    {"and": [{"or": [{"terms": {"year": [1999, 2001, 2024]}}, {"range": {"score": {"lt": -0.9}}}]},
             {"not": {"exists": "lang"}}]},
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_filter_mask_equals_brute_force_over_records(expr):
    records = _records()
    rows = [extract_fields(SCHEMA, r) for r in records]
    columns = build_columns(SCHEMA, rows)
    mask = compile_filter(expr, SCHEMA).mask(columns, len(records))
    want = np.array([_brute(expr, r) for r in records])
    np.testing.assert_array_equal(mask, want)


def test_fields_round_trip_through_zarr_with_checksum(tmp_path):
    records = _records(50)
    rows = [extract_fields(SCHEMA, r) for r in records]
    loc = resolve(str(tmp_path / "fields"))
    checksum = write_fields(loc, SCHEMA, build_columns(SCHEMA, rows), len(rows))
    schema, columns = read_fields(loc, verify=True)
    assert schema == SCHEMA and len(checksum) == 64
    for i, rec in enumerate(records):
        for spec in SCHEMA:
            got = columns[spec.name].value(i)
            assert got == rec.get(spec.name), (i, spec.name)


@pytest.mark.parametrize("spec, value, reason", [
    ("year:int", "2020", "must be a number (int), got str"),
    ("year:int", 2020.5, "must be an integer"),
    ("year:int", True, "must be a number (int), got bool"),
    ("score:float", math.inf, "is not finite"),
    ("lang:keyword", ["en"], "must be a single keyword, got a list"),
    ("lang:keyword", 3, "must be a string, got int"),
    ("open:bool", 1, "must be true or false, got int"),
    ("meta:stored", {"x": float("nan")}, "is not a JSON value"),
])
def test_bad_field_values_get_a_reason(spec, value, reason):
    s = FieldSpec.parse(spec)
    with pytest.raises(ValueError, match=re.escape(reason)):
        extract_fields([s], {s.name: value})


@pytest.mark.parametrize("options, reason", [
    (["year"], "NAME:TYPE"), (["year:date"], "not one of"), (["a:int", "a:float"], "twice"),
    (["doc_id:keyword"], "not allowed"), (["9x:int"], "not allowed"),
])
def test_bad_field_declarations(options, reason):
    with pytest.raises(FieldsFormatError, match=reason):
        parse_schema(options)


@pytest.mark.parametrize("expr, reason", [
    ({"term": {"nope": 1}}, "unknown field 'nope'"),
    ({"term": {"meta": 1}}, "stored only"),
    ({"term": {"year": "2020"}}, "filter.term.year: field 'year' is int, got str"),
    ({"range": {"lang": {"gt": 1}}}, "range needs an int or float field"),
    ({"range": {"year": {"after": 1}}}, "gt, gte, lt, lte"),
    ({"range": {"year": {"gt": float("nan")}}}, "finite number"),
    ({"terms": {"lang": []}}, "non-empty list"),
    ({"and": []}, "non-empty list"),
    ({"match": {"lang": "en"}}, "unknown clause 'match'"),
    ({"term": {"lang": "en"}, "not": {}}, "exactly one key"),
    ([{"term": {"lang": "en"}}], "exactly one key"),
    ({"and": [{"term": {"lang": "en"}}, {"or": [{"exists": "x"}]}]}, r"filter.and\[1\].or\[0\].exists"),
    ({"terms": {"year": list(range(300))}}, "too large"),
])
def test_bad_filters_name_the_offending_part(expr, reason):
    with pytest.raises(FilterError, match=reason):
        compile_filter(expr, SCHEMA)


def test_filter_key_is_canonical():
    a = compile_filter({"range": {"year": {"lt": 3, "gte": 1}}}, SCHEMA)
    b = compile_filter({"range": {"year": {"gte": 1, "lt": 3}}}, SCHEMA)
    assert a.key == b.key


def test_explain_contributions_sum_to_the_dot_product():
    import scipy.sparse as sp

    from pipeline.search.explain import explain

    rng = np.random.default_rng(5)
    docs = sp.random(30, 500, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    query = sp.random(1, 500, density=0.08, format="csr", dtype=np.float32, random_state=rng)
    tokens = [f"t{i}" for i in range(500)]
    scores = (docs @ query.T).toarray().ravel()
    for d in range(30):
        lo, hi = docs.indptr[d], docs.indptr[d + 1]
        parts = explain(query.indices, query.data, docs.indices[lo:hi], docs.data[lo:hi], tokens,
                        max_terms=500)
        assert sum(p.contribution for p in parts) == pytest.approx(scores[d], rel=1e-5, abs=1e-6)
        assert all(p.token == f"t{p.term_id}" for p in parts)
        assert [p.contribution for p in parts] == sorted((p.contribution for p in parts),
                                                         reverse=True)
