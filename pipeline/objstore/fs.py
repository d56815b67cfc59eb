"""fsspec URLs to filesystems and Zarr stores, with atomic small-object writes and retries.

Every URL the project accepts goes through `resolve`: a plain path or ``file://`` is the
local disk, ``s3://`` is S3 through s3fs. S3 takes the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``);
``storage_options`` passes anything else straight to the fsspec filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.faults import armed, fault_point

log = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(RuntimeError):
    """A read or write on object storage failed for a reason retries cannot fix."""


@dataclass(frozen=True)
class Location:
    """A resolved URL: the filesystem, the path inside it, and the options that built it."""

    url: str
    fs: fsspec.AbstractFileSystem
    path: str
    storage_options: dict

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *parts: str) -> "Location":
        return resolve(join_url(self.url, *parts), self.storage_options)


def _s3_env_options() -> dict:
    """Options s3fs does not read from the environment by itself on every version."""
    opts: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts.setdefault("endpoint_url", endpoint)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts.setdefault("client_kwargs", {}).setdefault("region_name", region)
    return opts


def resolve(url: str, storage_options: dict | None = None) -> Location:
    """Turn a URL or local path into a `Location`; local paths become absolute."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"storage URL must be a non-empty string, got {url!r}")
    options = dict(storage_options or {})
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        env = _s3_env_options()
        merged = {**env, **options}
        if "client_kwargs" in env and "client_kwargs" in options:
            merged["client_kwargs"] = {**env["client_kwargs"], **options["client_kwargs"]}
        options = merged
    if protocol == "file":
        path = url[len("file://"):] if url.startswith("file://") else url
        path = os.path.abspath(os.path.expanduser(path))
        return Location(url=path, fs=fsspec.filesystem("file"), path=path, storage_options=options)
    fs, path = fsspec.core.url_to_fs(url, **options)
    return Location(url=url.rstrip("/"), fs=fs, path=path.rstrip("/"), storage_options=options)


def join_url(url: str, *parts: str) -> str:
    """Join path parts onto a URL with '/' whatever the platform."""
    out = url.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


# Errors worth retrying: connection trouble and throttling. Anything else fails at once.
_TRANSIENT_NAMES = (
    "ConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError",
    "ClientConnectorError", "ServerDisconnectedError", "TimeoutError", "SlowDown",
    "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(name in text for name in _TRANSIENT_NAMES) or " 503" in text or " 500" in text


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 5, base_delay_s: float = 0.2) -> T:
    """Call `fn`, retrying transient storage errors with jittered exponential back-off."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = base_delay_s * (2 ** (attempt - 1)) * (1 + random.random())
            log.warning("%s failed (%s: %s); retry %d/%d in %.2fs",
                        what, type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _publish_local(path: str, data: bytes, publish) -> None:
    """Write `data` to a synced temporary file beside `path`, then `publish(tmp, path)` it
    (``os.replace`` to overwrite, ``os.link`` to create only if absent); the temporary goes."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a whole object so readers see the old content or the new, never a part.

    Local disk: write a temporary file beside the target, fsync, then rename over it.
    Object stores: a single PUT is atomic per object already.
    """
    def _write() -> None:
        if loc.is_local:
            _publish_local(loc.path, data, os.replace)
        else:
            loc.fs.pipe_file(loc.path, data)

    with_retries(_write, what=f"write {loc.url}")


def create_exclusive(loc: Location, data: bytes) -> bool:
    """Create the object `loc` with `data` only if it does not exist; False if it did.

    Whole or nothing, and of two concurrent creators exactly one succeeds. Local disk: the
    data goes to a temporary file that is then hard-linked to the name (link fails if the
    name exists). S3: a PUT with ``If-None-Match: *`` (conditional write, which S3 has
    supported since 2024; s3fs ``mode="create"``; moto's server honours it too).
    """
    def _create() -> bool:
        if loc.is_local:
            try:
                _publish_local(loc.path, data, os.link)   # link fails if the name exists
                return True
            except FileExistsError:
                return False
        try:
            loc.fs.pipe_file(loc.path, data, mode="create")
            return True
        except FileExistsError:
            return False

    return with_retries(_create, what=f"create {loc.url}")


def write_json_atomic(loc: Location, obj: Any) -> None:
    write_bytes_atomic(loc, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_bytes(loc: Location) -> bytes:
    return with_retries(lambda: loc.fs.cat_file(loc.path), what=f"read {loc.url}")


def read_json(loc: Location) -> Any:
    raw = read_bytes(loc)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{loc.url} is not valid JSON: {exc}") from exc


def exists(loc: Location) -> bool:
    # Listings on object stores can be cached; ask afresh.
    loc.fs.invalidate_cache(loc.path)
    return with_retries(lambda: loc.fs.exists(loc.path), what=f"stat {loc.url}")


def list_dir(loc: Location) -> list[str]:
    """Names (not paths) directly under `loc`; empty when it does not exist."""
    loc.fs.invalidate_cache(loc.path)
    try:
        entries = with_retries(lambda: loc.fs.ls(loc.path, detail=False), what=f"list {loc.url}")
    except FileNotFoundError:
        return []
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries})


def remove(loc: Location, recursive: bool = True) -> None:
    """Delete `loc` if present; missing is not an error."""
    try:
        with_retries(lambda: loc.fs.rm(loc.path, recursive=recursive), what=f"remove {loc.url}")
    except FileNotFoundError:
        pass


def zarr_store(loc: Location, *, read_only: bool):
    """A Zarr v3 store rooted at `loc`: LocalStore on disk, FsspecStore elsewhere."""
    import zarr.storage

    if loc.is_local:
        if not read_only:
            os.makedirs(loc.path, exist_ok=True)
        store = zarr.storage.LocalStore(loc.path, read_only=read_only)
    else:
        store = zarr.storage.FsspecStore.from_url(
            loc.url, storage_options=loc.storage_options, read_only=read_only
        )
    if not read_only and loc.path.rstrip("/").endswith("/index") and armed("commit:mid-index-save"):
        return _fault_store(store)
    return store


def _fault_store(store):
    """A store that SIGKILLs the process after its first array chunk is written (crash tests:
    an index group half saved; see `pipeline.faults`)."""
    import zarr.storage

    class FaultAfterFirstChunk(zarr.storage.WrapperStore):
        async def set(self, key, value):
            await self._store.set(key, value)
            if "/c" in key:
                fault_point("commit:mid-index-save")

    return FaultAfterFirstChunk(store)
