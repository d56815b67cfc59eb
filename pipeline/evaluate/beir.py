"""BEIR-layout test collections: corpus, queries and qrels, read strictly with line-numbered errors.

Layout of a collection folder (local path or fsspec URL)::

    corpus.jsonl       {"_id", "title", "text"} per line
    queries.jsonl      {"_id", "text"} per line
    qrels/<split>.tsv  "query-id<TAB>corpus-id<TAB>score", optional header line

Every reader decodes UTF-8 strictly, line by line, so a bad byte is reported with its line.
Blank lines are not records and are passed over. Anything else that is not a valid record
raises `DatasetError` naming the file and the line. Corpus records go through
`pipeline.data.records.parse_record`, the one definition of a valid document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

from pipeline.data.jsonl import decode_line, parse_json
from pipeline.data.records import BadRecord, parse_record
from pipeline.errors import UserError
from pipeline.objstore.fs import Location, join_url, resolve

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # query id -> {doc id -> relevance}


class DatasetError(UserError, ValueError):
    """A collection file is missing or holds a malformed line; names the file and the line."""

    def __init__(self, path: str, reason: str, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = reason
        where = path if line is None else f"{path} line {line}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class BeirPaths:
    """Where a collection's three files are; `open_beir` checks that they exist."""

    folder: str
    corpus: str
    queries: str
    qrels: str
    split: str
    storage_options: dict | None = None

    @property
    def name(self) -> str:
        return self.folder.rstrip("/").rsplit("/", 1)[-1]


def open_beir(folder: str, split: str = "test", storage_options: dict | None = None,
              need_corpus: bool = True) -> BeirPaths:
    """Locate a BEIR collection; raises `DatasetError` naming the first missing file."""
    root = resolve(folder, storage_options)
    if not root.fs.isdir(root.path):
        raise DatasetError(root.url, "collection folder does not exist")
    if not split or "/" in split:
        raise ValueError(f"split must be a plain qrels file name without .tsv, got {split!r}")
    paths = BeirPaths(folder=root.url, corpus=join_url(root.url, "corpus.jsonl"),
                      queries=join_url(root.url, "queries.jsonl"),
                      qrels=join_url(root.url, "qrels", f"{split}.tsv"), split=split,
                      storage_options=storage_options)
    required = [paths.queries, paths.qrels] + ([paths.corpus] if need_corpus else [])
    for url in required:
        loc = resolve(url, storage_options)
        if not loc.fs.isfile(loc.path):
            hint = ""
            if url == paths.qrels:
                qrels_dir = root.child("qrels")
                if qrels_dir.fs.isdir(qrels_dir.path):
                    splits = sorted(p.rsplit("/", 1)[-1][:-4] for p in qrels_dir.fs.ls(qrels_dir.path, detail=False)
                                    if p.endswith(".tsv"))
                    hint = f" (splits present: {', '.join(splits) or 'none'})"
            raise DatasetError(loc.url, f"file not found{hint}")
    return paths


def _lines(loc: Location) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its newline), blank lines skipped."""
    with loc.fs.open(loc.path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = decode_line(raw, at_file_start=number == 1)
            except ValueError as exc:
                raise DatasetError(loc.url, str(exc), number) from None
            if line.strip():
                yield number, line


def _json_object(loc: Location, number: int, line: str) -> dict:
    try:
        record = parse_json(line)
    except ValueError as exc:
        raise DatasetError(loc.url, str(exc), number) from None
    if not isinstance(record, dict):
        raise DatasetError(loc.url, f"expected a JSON object, got {type(record).__name__}", number)
    return record


def iter_corpus(url: str, storage_options: dict | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, document_text)`` in file order; BEIR text = title + " " + text, stripped.

    Raises `DatasetError` on a malformed record or a repeated id.
    """
    loc = resolve(url, storage_options)
    seen: dict[str, int] = {}
    for number, line in _lines(loc):
        record = _json_object(loc, number, line)
        try:
            doc_id, text = parse_record(record, source=loc.url, position=number)
        except BadRecord as exc:
            raise DatasetError(loc.url, exc.reason, number) from None
        if doc_id in seen:
            raise DatasetError(loc.url, f"document id {doc_id!r} repeats the one on line {seen[doc_id]}",
                               number)
        seen[doc_id] = number
        yield doc_id, text


def load_corpus(url: str, storage_options: dict | None = None) -> tuple[list[str], list[str]]:
    """The whole corpus as ``(doc_ids, texts)`` in file order."""
    doc_ids: list[str] = []
    texts: list[str] = []
    for doc_id, text in iter_corpus(url, storage_options):
        doc_ids.append(doc_id)
        texts.append(text)
    return doc_ids, texts


def load_queries(url: str, storage_options: dict | None = None) -> dict[str, str]:
    """``{query_id: text}`` in file order. Ids may be strings or integers; text must be non-blank."""
    loc = resolve(url, storage_options)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in _lines(loc):
        record = _json_object(loc, number, line)
        raw_id = record.get("_id", record.get("id"))
        if raw_id is None:
            raise DatasetError(loc.url, "missing query id (looked for _id, id)", number)
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
            raise DatasetError(loc.url, f"query id must be a non-empty string or integer, got {raw_id!r}",
                               number)
        query_id = str(raw_id).strip()
        text = record.get("text")
        if not isinstance(text, str):
            raise DatasetError(loc.url, f"query {query_id!r}: field 'text' must be a string, "
                                        f"got {type(text).__name__}", number)
        if not text.strip():
            raise DatasetError(loc.url, f"query {query_id!r}: empty text", number)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from a JSON escape
            raise DatasetError(loc.url, f"query {query_id!r}: text is not valid Unicode ({exc.reason})",
                               number) from None
        if query_id in queries:
            raise DatasetError(loc.url, f"query id {query_id!r} repeats the one on line {lines[query_id]}",
                               number)
        queries[query_id] = text.strip()
        lines[query_id] = number
    return queries


def _relevance(value: str) -> int:
    """Relevance grades are integers; "1.0" is accepted as 1, "0.5" is not."""
    try:
        return int(value)
    except ValueError:
        as_float = float(value)  # raises ValueError for non-numbers
        if not as_float.is_integer():
            raise ValueError(f"relevance must be an integer, got {value!r}") from None
        return int(as_float)


def load_qrels(url: str, storage_options: dict | None = None) -> Qrels:
    """``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (header line optional).

    A pair listed twice with the same grade is accepted once; with different grades it is an error.
    """
    loc = resolve(url, storage_options)
    qrels: Qrels = {}
    first = True
    for number, line in _lines(loc):
        fields = line.split("\t")
        if first and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
            first = False
            continue  # the BEIR header
        first = False
        if len(fields) != 3:
            raise DatasetError(loc.url, f"expected 3 tab-separated fields (query-id, corpus-id, score), "
                                        f"got {len(fields)}", number)
        query_id, doc_id, score = (f.strip() for f in fields)
        if not query_id or not doc_id:
            raise DatasetError(loc.url, "empty query-id or corpus-id", number)
        try:
            grade = _relevance(score)
        except ValueError:
            raise DatasetError(loc.url, f"relevance must be an integer, got {score!r}", number) from None
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DatasetError(loc.url, f"pair ({query_id}, {doc_id}) judged twice with different "
                                        f"grades ({judged[doc_id]} and {grade})", number)
        judged[doc_id] = grade
    if not qrels:
        raise DatasetError(loc.url, "no judgments")
    return qrels
