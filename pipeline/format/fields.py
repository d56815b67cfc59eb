"""Document fields kept beside a shard's postings: typed, columnar, checksummed.

A field is declared at index time as ``NAME:TYPE`` (`lsr index --field`):

=========  ==========================================  =========================
TYPE       what a value may be                         filterable / returnable
=========  ==========================================  =========================
keyword    a string                                    both
int        an integer (no bool, no float)              both
float      a finite number (int or float, no bool)     both
bool       true or false                               both
stored     any JSON value                              returnable only
=========  ==========================================  =========================

A missing field or a JSON null is "absent" (what ``exists`` tests); any other value of the
wrong type is a bad record, with the reason. Lists are not values: a field holds one scalar.

Zarr v3 group ``fields/`` of a shard (attributes ``format="lsr-fields"``, ``version``,
``schema``, ``checksum``), ``n`` documents in shard order:

    <name>/present   bool   (n,)    the document has a value
    <name>/codes     int32  (n,)    keyword: index into <name>/dictionary, -1 when absent
    <name>/dictionary string (d,)   keyword: the distinct values, sorted
    <name>/values    int64 | float64 | bool (n,)   int, float, bool: the value (0 when absent)
    <name>/json      string (n,)    stored: the value as compact JSON ("" when absent)

The checksum (sha256 over every array's bytes, fields in schema order) is stored in the
attributes and returned by `write_fields`, for the shard's commit record.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.objstore import Location, with_retries, zarr_store

FIELDS_FORMAT = "lsr-fields"
FIELDS_VERSION = 1
FIELD_TYPES = ("keyword", "int", "float", "bool", "stored")
FILTERABLE_TYPES = ("keyword", "int", "float", "bool")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
# Corpus fields the job itself reads: a declared field may not shadow them in the store.
RESERVED_NAMES = ("doc_id",)


class FieldsFormatError(UserError, ValueError):
    """A declared field or a stored fields group is invalid."""


@dataclass(frozen=True)
class FieldSpec:
    """One declared field: its name in the corpus records and its type."""

    name: str
    type: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in RESERVED_NAMES:
            raise FieldsFormatError(f"field name {self.name!r} is not allowed (letters, digits, "
                                    "_ . -, starting with a letter or _; not doc_id)")
        if self.type not in FIELD_TYPES:
            raise FieldsFormatError(f"field {self.name!r}: type {self.type!r} is not one of "
                                    f"{', '.join(FIELD_TYPES)}")

    @property
    def filterable(self) -> bool:
        return self.type in FILTERABLE_TYPES

    @classmethod
    def parse(cls, option: str) -> "FieldSpec":
        """``NAME:TYPE`` as given to ``--field``."""
        name, sep, kind = option.rpartition(":")
        if not sep or not name:
            raise FieldsFormatError(f"--field takes NAME:TYPE, got {option!r}")
        return cls(name, kind)


def parse_schema(options: Sequence[str] | None) -> tuple[FieldSpec, ...]:
    """The ``--field`` options as a schema; a name given twice is an error."""
    specs = tuple(FieldSpec.parse(o) for o in options or ())
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise FieldsFormatError(f"field {name!r} is declared twice")
    return specs


def schema_to_json(schema: Sequence[FieldSpec]) -> list[dict]:
    return [{"name": s.name, "type": s.type} for s in schema]


def schema_from_json(obj: Any) -> tuple[FieldSpec, ...]:
    if not isinstance(obj, list):
        raise FieldsFormatError(f"field schema must be a list, got {type(obj).__name__}")
    return tuple(FieldSpec(str(o["name"]), str(o["type"])) for o in obj)


def check_value(spec: FieldSpec, value: Any) -> Any:
    """The value as stored, ``None`` when absent; raises ``ValueError`` with the reason."""
    if value is None:
        return None
    kind = spec.type
    if kind == "stored":
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"field {spec.name!r} is not a JSON value ({exc})") from None
        return value
    if isinstance(value, (list, dict)):
        raise ValueError(f"field {spec.name!r} must be a single {kind}, got a "
                         f"{'list' if isinstance(value, list) else 'object'}")
    if kind == "keyword":
        if not isinstance(value, str):
            raise ValueError(f"field {spec.name!r} must be a string, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"field {spec.name!r} must be true or false, got "
                             f"{type(value).__name__}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field {spec.name!r} must be a number ({kind}), got "
                         f"{type(value).__name__}")
    if kind == "int":
        if isinstance(value, float):
            raise ValueError(f"field {spec.name!r} must be an integer, got {value!r}")
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError(f"field {spec.name!r} does not fit in 64 bits")
        return int(value)
    if not math.isfinite(float(value)):
        raise ValueError(f"field {spec.name!r} is not finite ({value!r})")
    return float(value)


def extract_fields(schema: Sequence[FieldSpec], record: Mapping[str, Any]) -> dict[str, Any]:
    """The declared fields of one corpus record, checked (``ValueError`` on a bad one)."""
    return {spec.name: check_value(spec, record.get(spec.name)) for spec in schema}


@dataclass
class FieldColumn:
    """One field over a shard's documents (layout in the module docstring)."""

    spec: FieldSpec
    present: np.ndarray                    # bool (n,)
    codes: np.ndarray | None = None        # keyword: int32 (n,)
    dictionary: np.ndarray | None = None   # keyword: object (d,), sorted
    values: np.ndarray | None = None       # int64 | float64 | bool (n,)
    json: np.ndarray | None = None         # stored: object (n,)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"present": self.present}
        for name in ("codes", "dictionary", "values", "json"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def value(self, row: int) -> Any:
        """The stored value of document ``row`` (``None`` when absent)."""
        if not self.present[row]:
            return None
        kind = self.spec.type
        if kind == "keyword":
            return str(self.dictionary[self.codes[row]])
        if kind == "stored":
            return json.loads(self.json[row])
        if kind == "bool":
            return bool(self.values[row])
        return int(self.values[row]) if kind == "int" else float(self.values[row])


_VALUE_DTYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_}


def build_columns(schema: Sequence[FieldSpec], rows: Sequence[Mapping[str, Any]]
                  ) -> dict[str, FieldColumn]:
    """Columns from per-document field dicts already checked by `extract_fields`."""
    n = len(rows)
    columns = {}
    for spec in schema:
        raw = [row.get(spec.name) for row in rows]
        present = np.fromiter((v is not None for v in raw), dtype=np.bool_, count=n)
        if spec.type == "keyword":
            dictionary = np.asarray(sorted({v for v in raw if v is not None}), dtype=object)
            lookup = {v: i for i, v in enumerate(dictionary)}
            codes = np.fromiter((lookup[v] if v is not None else -1 for v in raw), np.int32, n)
            columns[spec.name] = FieldColumn(spec, present, codes=codes, dictionary=dictionary)
        elif spec.type == "stored":
            text = np.asarray([json.dumps(v, separators=(",", ":"), ensure_ascii=False)
                               if v is not None else "" for v in raw], dtype=object)
            columns[spec.name] = FieldColumn(spec, present, json=text)
        else:
            dtype = _VALUE_DTYPES[spec.type]
            values = np.fromiter((v if v is not None else 0 for v in raw), dtype=dtype, count=n)
            columns[spec.name] = FieldColumn(spec, present, values=values)
    return columns


def _checksum(schema: Sequence[FieldSpec], columns: Mapping[str, FieldColumn]) -> str:
    h = hashlib.sha256(json.dumps(schema_to_json(schema), sort_keys=True).encode())
    for spec in schema:
        for name, arr in sorted(columns[spec.name].arrays().items()):
            h.update(name.encode())
            if arr.dtype == object:
                for v in arr:
                    h.update(str(v).encode("utf-8"))
                    h.update(b"\0")
            else:
                h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def write_fields(loc: Location, schema: Sequence[FieldSpec],
                 columns: Mapping[str, FieldColumn], n_docs: int) -> str:
    """Write a shard's fields group (replacing what is there) and return its checksum."""
    import zarr

    checksum = _checksum(schema, columns)

    def _write() -> None:
        group = zarr.open_group(zarr_store(loc, read_only=False), mode="w")
        for spec in schema:
            sub = group.create_group(spec.name)
            for name, arr in columns[spec.name].arrays().items():
                dtype = str if arr.dtype == object else arr.dtype
                z = sub.create_array(name, shape=arr.shape, dtype=dtype,
                                     chunks=(max(1, min(1 << 20, arr.shape[0])),))
                if arr.size:
                    z[:] = arr
        group.attrs.update({"format": FIELDS_FORMAT, "version": FIELDS_VERSION,
                            "n_docs": int(n_docs), "schema": schema_to_json(schema),
                            "checksum": checksum})   # attributes last: the commit point

    with_retries(_write, what=f"write fields {loc.url}")
    return checksum


def read_fields(loc: Location, *, verify: bool = False
                ) -> tuple[tuple[FieldSpec, ...], dict[str, FieldColumn]]:
    """Read a fields group: its schema and columns; with ``verify``, check the checksum."""
    import zarr

    try:
        group = zarr.open_group(zarr_store(loc, read_only=True), mode="r")
        attrs = dict(group.attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise FieldsFormatError(f"{loc.url}: no fields group") from exc
    if attrs.get("format") != FIELDS_FORMAT or attrs.get("version") != FIELDS_VERSION:
        raise FieldsFormatError(f"{loc.url}: not an {FIELDS_FORMAT} v{FIELDS_VERSION} group "
                                "(incomplete write or another version)")
    schema = schema_from_json(attrs.get("schema"))
    n = int(attrs["n_docs"])
    columns = {}
    for spec in schema:
        try:
            sub = group[spec.name]
            arrays = {name: np.asarray(sub[name][:]) for name in sub.array_keys()}
        except KeyError as exc:
            raise FieldsFormatError(f"{loc.url}: field {spec.name!r} is missing") from exc
        for name in ("dictionary", "json"):
            if name in arrays:
                arrays[name] = arrays[name].astype(object)
        column = FieldColumn(spec, **arrays)
        if column.present.shape != (n,):
            raise FieldsFormatError(f"{loc.url}: field {spec.name!r} has "
                                    f"{column.present.shape[0]} rows, expected {n}")
        columns[spec.name] = column
    if verify and _checksum(schema, columns) != attrs.get("checksum"):
        raise FieldsFormatError(f"{loc.url}: fields checksum mismatch (truncated or corrupt)")
    return schema, columns


def verify_fields(loc: Location) -> str:
    """Read a fields group, check it against its stored checksum and return that checksum
    (for comparing with a shard's commit record); `FieldsFormatError` when it does not verify."""
    schema, columns = read_fields(loc, verify=True)
    return _checksum(schema, columns)
