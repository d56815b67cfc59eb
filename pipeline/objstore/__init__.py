"""Object-storage access: fsspec URLs, Zarr v3 stores, atomic commits, retries.

The bottom layer: imports no other `pipeline` package except `pipeline.errors`.
"""

from pipeline.objstore.fs import (
    StorageError,
    Location,
    create_exclusive,
    exists,
    join_url,
    list_dir,
    read_bytes,
    read_json,
    remove,
    resolve,
    with_retries,
    write_bytes_atomic,
    write_json_atomic,
    zarr_store,
)

__all__ = [
    "StorageError",
    "Location",
    "create_exclusive",
    "exists",
    "join_url",
    "list_dir",
    "read_bytes",
    "read_json",
    "remove",
    "resolve",
    "with_retries",
    "write_bytes_atomic",
    "write_json_atomic",
    "zarr_store",
]
