"""On-storage codecs: a shard's postings group and an index's Zarr group.

Holds how bytes are laid out and checked, nothing about where they live in an index root
(that is `pipeline.catalog`). Imports `pipeline.objstore` and `pipeline.index`; must not
import `pipeline.catalog`, `pipeline.search`, `pipeline.batch` or `pipeline.serve`.
"""

from pipeline.format.index_group import (IndexFormatError, index_info, load_blocked, load_exact,
                                         load_index, save_index)
from pipeline.format.postings import (PostingsFormatError, ShardPostings, fingerprint_texts,
                                      read_postings, write_postings)

__all__ = ["IndexFormatError", "index_info", "load_blocked", "load_exact", "load_index", "save_index",
           "PostingsFormatError", "ShardPostings", "fingerprint_texts", "read_postings",
           "write_postings"]
