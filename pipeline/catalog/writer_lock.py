"""One writer per index root: a leased, renewed, fenced writer lock that works on a local
directory and on S3 alike.

Protocol. The lock is a sequence of records ``ROOT/locks/writer/<n>.json`` (n zero-padded,
growing past its width). The record with the highest n is the lock:

* acquire: list the records; if the highest one is held (not released, not expired) fail
  at once naming its holder (host, pid, start time); else create record n+1 with a
  create-if-absent write (`pipeline.objstore.create_exclusive`: a hard link locally, a PUT
  with ``If-None-Match: *`` on S3). Of two runs racing for n+1 exactly one creates it; the
  other looks again and finds it held.
* renew: the holder rewrites its own record with a later expiry, from a background thread
  every `ttl_s / 3`. A record nobody renews (its run died) expires after `ttl_s`, and the
  next run takes over by creating the next record. A holder on this very host whose process
  is gone (no such pid, or a pid started after the record) is dead for sure: its record is
  taken over at once, so re-running a killed command on the same machine needs no wait.
* fence: before every step that makes something visible (manifest, CURRENT) and before
  garbage collection deletes anything, the holder checks that its record is still the
  highest and has at least `ttl_s / 3` left; if not, it stops without committing.
* release: the holder marks its record released (it is never deleted, so n only grows).

Assumptions: storage gives read-after-write and list-after-write consistency (local disks;
S3 since December 2020) and supports conditional create (S3 since August 2024; MinIO and
moto's server too). Clocks of writers agree to well under `ttl_s / 3` (expiry is judged by
the reader's clock against the holder's `expires_at`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from pipeline.catalog.layout import IndexLayout
from pipeline.errors import UserError
from pipeline.objstore import Location, create_exclusive, list_dir, read_json, remove, write_json_atomic

log = logging.getLogger(__name__)

LOCK_TTL_S = 120.0
"""Seconds a writer lock lives without renewal: a crashed run blocks the root this long at
most; the live holder renews every TTL/3 (40 s), far above storage round trips."""


class WriterLockHeld(UserError, RuntimeError):
    """Another live run holds the index root's writer lock."""


class WriterLockLost(RuntimeError):
    """This run's writer lock expired or was taken over: it must not commit anything."""


def record_name(n: int) -> str:
    return f"{n:012d}.json"


def parse_record_name(name: str) -> int | None:
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() and len(stem) >= 12 else None


def _lock_dir(layout: IndexLayout) -> Location:
    return layout.root.child("locks", "writer")


def _latest(layout: IndexLayout) -> tuple[int, dict | None]:
    numbers = [n for n in map(parse_record_name, list_dir(_lock_dir(layout))) if n is not None]
    if not numbers:
        return 0, None
    n = max(numbers)
    try:
        return n, read_json(_lock_dir(layout).child(record_name(n)))
    except FileNotFoundError:
        return n, None


def describe(record: dict) -> str:
    started = dt.datetime.fromtimestamp(record.get("started_at", 0), dt.timezone.utc)
    return (f"{record.get('command', 'a run')} on host {record.get('host')} pid {record.get('pid')}, "
            f"started {started.isoformat(timespec='seconds')}")


def _process_gone(record: dict) -> bool:
    """The holder ran on this host and its process no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        import psutil

        proc = psutil.Process(record["pid"])
        return proc.create_time() > float(record.get("started_at", 0)) + 1.0  # pid reused
    except ImportError:
        try:
            os.kill(record["pid"], 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends: the process is gone
        return True


def _held(record: dict | None, now: float) -> bool:
    return (record is not None and not record.get("released")
            and now < float(record.get("expires_at", 0)) and not _process_gone(record))


@dataclass
class WriterLock:
    """The writer lock this process holds on one index root (see the module docstring)."""

    layout: IndexLayout
    number: int
    record: dict
    ttl_s: float
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None
    lost: bool = False

    @property
    def loc(self) -> Location:
        return _lock_dir(self.layout).child(record_name(self.number))

    def renew(self) -> None:
        """Push the expiry `ttl_s` ahead; marks the lock lost if another run took it over."""
        latest, _ = _latest(self.layout)
        if latest != self.number or time.time() >= self.record["expires_at"]:
            self.lost = True
            return
        self.record = {**self.record, "expires_at": time.time() + self.ttl_s,
                       "renewed_at": time.time()}
        write_json_atomic(self.loc, self.record)

    def check(self, before: str) -> None:
        """Raise `WriterLockLost` unless the lock is still ours with ttl_s/3 to spare."""
        latest, record = _latest(self.layout)
        mine = latest == self.number and record is not None and record.get("token") == self.record["token"]
        if self.lost or not mine or time.time() + self.ttl_s / 3 > float(record.get("expires_at", 0)):
            self.lost = True
            holder = f" (now held by {describe(record)})" if record and not mine else ""
            raise WriterLockLost(f"{self.layout.url}: this run's writer lock expired or was taken "
                                 f"over{holder}; stopped before {before}, nothing of it was made "
                                 f"visible")

    def start_renewing(self) -> None:
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - retried at the next tick; check() fences
                    log.warning("renewing the writer lock of %s failed: %s", self.layout.url, exc)
                if self.lost:
                    log.error("the writer lock of %s was lost; this run will not commit",
                              self.layout.url)
                    return

        self._thread = threading.Thread(target=loop, name="lsr-writer-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and mark the record released (if it is still ours)."""
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        latest, _ = _latest(self.layout)
        if latest == self.number and not self.lost:
            write_json_atomic(self.loc, {**self.record, "released": True, "expires_at": 0.0})

    def __enter__(self) -> "WriterLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_writer_lock(layout: IndexLayout, command: str, ttl_s: float = LOCK_TTL_S,
                        renew: bool = True) -> WriterLock:
    """Take the index root's writer lock or raise `WriterLockHeld` naming its holder."""
    if ttl_s <= 0:
        raise ValueError(f"lock ttl_s must be > 0, got {ttl_s}")
    for _ in range(20):
        latest, record = _latest(layout)
        now = time.time()
        if _held(record, now):
            raise WriterLockHeld(
                f"{layout.url} is being written by another run: {describe(record)} (its lock "
                f"expires in {float(record['expires_at']) - now:.0f} s unless renewed); wait "
                f"for it to finish, or, if it died, re-run after the lock expires")
        if record is not None and not record.get("released"):
            log.warning("taking over the writer lock of %s from a run that stopped renewing it: %s",
                        layout.url, describe(record))
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                "started_at": now, "expires_at": now + ttl_s, "renewed_at": now,
                "token": uuid.uuid4().hex, "released": False}
        loc = _lock_dir(layout).child(record_name(latest + 1))
        if create_exclusive(loc, (json.dumps(mine, indent=2) + "\n").encode()):
            lock = WriterLock(layout, latest + 1, mine, ttl_s)
            if latest > 1:   # keep the previous holder's record (who had it last), drop older
                remove(_lock_dir(layout).child(record_name(latest - 1)), recursive=False)
            if renew:
                lock.start_renewing()
            return lock
        # Another run created that record first: look again (it is most likely held now).
    raise RuntimeError(f"{layout.url}: could not take the writer lock (too much contention)")
