"""The filter language: a JSON expression over a shard's declared fields -> an allowed-set mask.

The shapes follow OpenSearch / Elasticsearch query DSL, reduced to what a filter needs:

    {"term":   {"lang": "en"}}                        equal (keyword, int, float, bool)
    {"terms":  {"source": ["pubmed", "arxiv"]}}       equal to any of the listed values
    {"range":  {"year": {"gte": 2020, "lt": 2025}}}   gt / gte / lt / lte (int, float)
    {"exists": "title"}                               has a value ({"exists": {"field": F}} too)
    {"and": [F, ...]}, {"or": [F, ...]}, {"not": F}

A document without a value never matches ``term``, ``terms`` or ``range`` (so ``not`` of
them does match it). Only filterable fields (keyword, int, float, bool) can be used; a
``stored`` field cannot. `compile_filter` checks an expression against the schema once
(unknown field, wrong value type, bad shape, too large) and raises `FilterError` with
the path of the offending part; `Filter.mask` then evaluates it on a shard's columns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.format.fields import FieldColumn, FieldSpec

MAX_FILTER_NODES = 256
"""Default bound on an expression's size (clauses plus listed values): a filter is meant to
be a handful of conditions, and each node costs a pass over the shard's documents."""

_RANGE_OPS = ("gt", "gte", "lt", "lte")


class FilterError(UserError, ValueError):
    """A filter expression that is malformed, too large, or does not fit the fields."""


class FilterTooLarge(FilterError):
    """A filter with more clauses and values than allowed (HTTP 413 rather than 422)."""


@dataclass(frozen=True)
class Filter:
    """A checked filter expression; ``key`` is its canonical JSON (a cache key)."""

    expr: Any
    key: str

    def mask(self, columns: Mapping[str, FieldColumn], n_docs: int) -> np.ndarray:
        """Allowed documents of one shard as a bool array of length ``n_docs``."""
        return _eval(self.expr, columns, n_docs)


def compile_filter(expr: Any, schema: Sequence[FieldSpec], *,
                   max_nodes: int = MAX_FILTER_NODES) -> Filter:
    """Check ``expr`` against ``schema``; raises `FilterError` naming the offending part."""
    fields = {s.name: s for s in schema}
    count = [0]
    _check(expr, fields, "filter", count, max_nodes)
    return Filter(expr, json.dumps(expr, sort_keys=True, separators=(",", ":")))


def _one_key(node: Any, path: str) -> tuple[str, Any]:
    if not isinstance(node, dict) or len(node) != 1:
        raise FilterError(f"{path}: a clause is an object with exactly one key (term, terms, "
                          "range, exists, and, or, not)")
    return next(iter(node.items()))


def _field(fields: Mapping[str, FieldSpec], name: Any, path: str) -> FieldSpec:
    if not isinstance(name, str) or name not in fields:
        known = ", ".join(sorted(s.name for s in fields.values() if s.filterable)) or "none"
        raise FilterError(f"{path}: unknown field {name!r} (filterable fields: {known})")
    spec = fields[name]
    if not spec.filterable:
        raise FilterError(f"{path}: field {name!r} is stored only, not filterable")
    return spec


def _check_value(spec: FieldSpec, value: Any, path: str) -> None:
    kind = spec.type
    ok = {"keyword": isinstance(value, str),
          "bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value)}[kind]
    if kind == "int" and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok = True    # 2020.0 compares equal to 2020
    if not ok:
        raise FilterError(f"{path}: field {spec.name!r} is {kind}, got {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    return f"{type(value).__name__} {json.dumps(value)[:40]}" if value is not None else "null"


def _check(node: Any, fields: Mapping[str, FieldSpec], path: str, count: list[int],
           max_nodes: int) -> None:
    count[0] += 1
    if count[0] > max_nodes:
        raise FilterTooLarge(f"filter too large: more than {max_nodes} clauses and values")
    op, arg = _one_key(node, path)
    here = f"{path}.{op}"
    if op in ("and", "or"):
        if not isinstance(arg, list) or not arg:
            raise FilterError(f"{here}: takes a non-empty list of clauses")
        for i, child in enumerate(arg):
            _check(child, fields, f"{here}[{i}]", count, max_nodes)
    elif op == "not":
        _check(arg, fields, here, count, max_nodes)
    elif op == "exists":
        name = arg.get("field") if isinstance(arg, dict) and set(arg) == {"field"} else arg
        _field(fields, name, here)
    elif op in ("term", "terms", "range"):
        name, value = _one_key(arg, here) if isinstance(arg, dict) and len(arg) == 1 else \
            (None, None)
        if name is None:
            raise FilterError(f"{here}: takes an object with one field, e.g. "
                              f"{{\"{op}\": {{\"FIELD\": ...}}}}")
        spec = _field(fields, name, here)
        if op == "term":
            _check_value(spec, value, f"{here}.{name}")
        elif op == "terms":
            if not isinstance(value, list) or not value:
                raise FilterError(f"{here}.{name}: takes a non-empty list of values")
            count[0] += len(value)
            if count[0] > max_nodes:
                raise FilterTooLarge(f"filter too large: more than {max_nodes} clauses and values")
            for i, v in enumerate(value):
                _check_value(spec, v, f"{here}.{name}[{i}]")
        else:
            if spec.type not in ("int", "float"):
                raise FilterError(f"{here}.{name}: range needs an int or float field, "
                                  f"{name!r} is {spec.type}")
            if not isinstance(value, dict) or not value or set(value) - set(_RANGE_OPS):
                raise FilterError(f"{here}.{name}: takes an object of gt, gte, lt, lte")
            for bound, v in value.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                        not math.isfinite(v):
                    raise FilterError(f"{here}.{name}.{bound}: must be a finite number, got "
                                      f"{_describe(v)}")
    else:
        raise FilterError(f"{path}: unknown clause {op!r} (term, terms, range, exists, and, "
                          "or, not)")


def _eval(node: Any, columns: Mapping[str, FieldColumn], n: int) -> np.ndarray:
    op, arg = next(iter(node.items()))
    if op == "and":
        out = _eval(arg[0], columns, n)
        for child in arg[1:]:
            out &= _eval(child, columns, n)
        return out
    if op == "or":
        out = _eval(arg[0], columns, n)
        for child in arg[1:]:
            out |= _eval(child, columns, n)
        return out
    if op == "not":
        return ~_eval(arg, columns, n)
    if op == "exists":
        name = arg["field"] if isinstance(arg, dict) else arg
        return columns[name].present.copy()
    name, value = next(iter(arg.items()))
    col = columns[name]
    if op == "term":
        return _equal_any(col, [value])
    if op == "terms":
        return _equal_any(col, value)
    out = col.present.copy()
    v = col.values
    for bound, limit in value.items():
        out &= {"gt": v > limit, "gte": v >= limit, "lt": v < limit, "lte": v <= limit}[bound]
    return out


def _equal_any(col: FieldColumn, wanted: list) -> np.ndarray:
    if col.spec.type == "keyword":
        lookup = {v: i for i, v in enumerate(col.dictionary)}
        codes = np.asarray([lookup[w] for w in wanted if w in lookup], dtype=np.int32)
        return np.isin(col.codes, codes) & col.present
    return np.isin(col.values, np.asarray(wanted, dtype=col.values.dtype)) & col.present
