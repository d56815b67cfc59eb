"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback."""

from __future__ import annotations


def is_user_error(exc: BaseException) -> bool:
    from pipeline.data.records import BadRecord
    from pipeline.encode.models import ModelNotFound
    from pipeline.indexing.datasource import BadRecordError
    from pipeline.reindex.diff import ReindexError
    from pipeline.store.manifest import ManifestError
    from pipeline.store.postings import PostingsFormatError

    return isinstance(exc, (BadRecord, BadRecordError, ManifestError, PostingsFormatError,
                            ModelNotFound, ReindexError, FileNotFoundError, PermissionError))
