"""The one JSONL line reader: strict UTF-8 decoding and JSON parsing of one line, with reasons
a person can read. Used by the corpus reader of the jobs and by the BEIR readers.

A UTF-8 byte order mark at the very start of a file is accepted (and dropped); anywhere
else it is an error like any other bad character.
"""

from __future__ import annotations

import json
from typing import Any

BOM = b"\xef\xbb\xbf"


def decode_line(raw: bytes, *, at_file_start: bool) -> str:
    """One line's bytes as text, without its line ending; ValueError(reason) if not UTF-8."""
    if at_file_start and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start + 1} of the line ({exc.reason})") from None


def parse_json(line: str, object_pairs_hook=None) -> Any:
    """The JSON value of one line; ValueError(reason) naming what is wrong and the column.
    `object_pairs_hook` as in `json.loads` (the vector reader uses it to see repeated keys)."""
    try:
        return json.loads(line, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        # json's messages end in " at" before their own position text ("Invalid control
        # character at"): drop it, the column follows.
        msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
        raise ValueError(f"not valid JSON ({msg} at column {exc.colno})") from None


def parse_json_line(raw: bytes, *, at_file_start: bool) -> Any:
    """`decode_line` then `parse_json`."""
    return parse_json(decode_line(raw, at_file_start=at_file_start))
