"""Corpus records: field mapping, validation, and the BEIR document text.

Invalid UTF-8 is caught where bytes are decoded (the readers decode strictly); here a
string is checked for lone surrogates, which JSON escapes can smuggle in. One place
decides what a valid document is, so the in-process readers, the Ray job
and evaluation agree on every record. A bad record raises `BadRecord` naming its
source and position; callers choose to fail or to write it to the rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.errors import UserError


@dataclass(frozen=True)
class FieldMap:
    """Which input fields hold the id, the title and the text."""

    id: tuple[str, ...] = ("_id", "id", "docid", "doc_id")
    title: str | None = "title"
    text: str = "text"

    @classmethod
    def from_options(cls, id_field: str | None = None, title_field: str | None = "title",
                     text_field: str = "text") -> "FieldMap":
        ids = (id_field,) if id_field else cls.id
        return cls(id=ids, title=title_field or None, text=text_field)


class BadRecord(UserError, ValueError):
    """A corpus record that cannot be indexed; names where it came from and why."""

    def __init__(self, reason: str, source: str | None = None, position: int | None = None,
                 record: Any = None):
        self.reason = reason
        self.source = source
        self.position = position
        self.record = record
        where = source or "<input>"
        if position is not None:
            where += f" record {position}"
        super().__init__(f"{where}: {reason}")


def document_text(title: str | None, text: str) -> str:
    """BEIR's document text: title and body joined by one space, stripped."""
    if title:
        return f"{title} {text}".strip()
    return text.strip()


def _check_string(value: Any, field: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a "\ud800" JSON escape
        raise ValueError(f"field {field!r} is not valid Unicode: {exc.reason}") from None
    if not allow_empty and not value.strip():
        raise ValueError(f"field {field!r} is empty")
    return value


def parse_record(record: Mapping[str, Any], fields: FieldMap = FieldMap(), *,
                 source: str | None = None, position: int | None = None) -> tuple[str, str]:
    """Validate one record and return ``(doc_id, document_text)``.

    Ids may be strings or integers (stored as their decimal string) and are kept verbatim:
    an id with leading or trailing whitespace is rejected with that reason, never stripped
    (qrels and queries name ids without it, so a stripped id could silently match another).
    A document whose title and text are both blank is valid: its text is "" (the jobs index
    it as an empty vector that no query retrieves). Raises `BadRecord`.
    """
    try:
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
        id_field = next((f for f in fields.id if record.get(f) is not None), None)
        if id_field is None:
            raise ValueError(f"missing id (looked for {', '.join(fields.id)})")
        raw_id = record[id_field]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise ValueError(f"id field {id_field!r} must be a string or integer, "
                             f"got {type(raw_id).__name__}")
        doc_id = _check_string(str(raw_id), id_field, allow_empty=False)
        if doc_id != doc_id.strip():
            raise ValueError(f"id {doc_id!r} has leading or trailing whitespace (ids are kept "
                             f"verbatim, never stripped: fix the id in the corpus)")
        if fields.text not in record or record[fields.text] is None:
            raise ValueError(f"missing text field {fields.text!r}")
        text = _check_string(record[fields.text], fields.text, allow_empty=True)
        title = None
        if fields.title and record.get(fields.title) is not None:
            title = _check_string(record[fields.title], fields.title, allow_empty=True)
        return doc_id, document_text(title, text)
    except ValueError as exc:
        if isinstance(exc, BadRecord):
            raise
        raise BadRecord(str(exc), source=source, position=position, record=record) from None
