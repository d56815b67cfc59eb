"""Garbage collection of an index root: old generations, unreferenced shards, stale staging.

Rules (one writer per index root; readers go through CURRENT or a leased generation):

* Kept generations: the newest `keep_generations` committed ones (<= CURRENT), CURRENT
  itself, and every generation named by an unexpired server lease (`pipeline.catalog.leases`:
  a server leases what it answers from and what it is switching to or draining).
* A manifest newer than CURRENT was written by a run that has not moved CURRENT yet (or
  never will): kept until it is `min_age_s` old.
* Deleted generations lose their manifest first, then their rejects. Shards go after the
  manifests, so a crash half-way leaves only unreferenced shards, which the next run
  deletes; never a manifest naming a missing shard.
* A shard directory is deleted when no kept manifest names it. Shards named for a
  generation newer than CURRENT may belong to a run still writing: deleted only when
  nothing in them changed for `min_age_s`. Directories not named like shards are left alone.
* `staging/<plan>/` of abandoned plans: deleted when nothing in it changed for `min_age_s`
  (a long job keeps touching its staging; a crashed one does not).
* Lease files belong to their servers and are never touched.
* Only the holder of the root's writer lock deletes (`pipeline.catalog.writer_lock`): a job
  collects with the lock it holds; anyone else takes the lock for the collection, and fails
  naming the holder while a live run has it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import asdict, dataclass, field

from pipeline.catalog.layout import IndexLayout, generation_file_name, parse_shard_name
from pipeline.catalog.leases import leased_generations
from pipeline.catalog.manifest import list_generations, read_current_generation, read_manifest
from pipeline.catalog.writer_lock import WriterLock, acquire_writer_lock
from pipeline.faults import fault_point
from pipeline.objstore import Location, list_dir, remove, with_retries

log = logging.getLogger(__name__)

KEEP_GENERATIONS = 3
"""Committed generations kept by default: the live one, and two to roll back to or to drain."""

GC_MIN_AGE_S = 24 * 3600.0
"""How long staging and uncommitted shards must sit untouched before GC removes them. A day:
far longer than a live run leaves its files untouched (it rewrites its staging every block),
so only abandoned work is collected."""


@dataclass
class GcReport:
    current: int | None
    kept_generations: list[int] = field(default_factory=list)
    leased_generations: list[int] = field(default_factory=list)
    deleted_generations: list[int] = field(default_factory=list)
    deleted_shards: list[str] = field(default_factory=list)
    deleted_staging: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)     # too young to delete yet
    dry_run: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def _mtime(info: dict) -> float | None:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def age_s(loc: Location, now: float) -> float:
    """Seconds since anything under `loc` (a file or a folder) last changed; inf if empty."""
    def newest() -> float | None:
        loc.fs.invalidate_cache(loc.path)
        if loc.fs.isfile(loc.path):
            return _mtime(loc.fs.info(loc.path))
        times = [_mtime(i) for i in loc.fs.find(loc.path, detail=True, withdirs=False).values()]
        times = [t for t in times if t is not None]
        return max(times) if times else None

    try:
        latest = with_retries(newest, what=f"age of {loc.url}")
    except FileNotFoundError:
        return math.inf
    return math.inf if latest is None else now - latest


def collect_garbage(layout: IndexLayout, keep_generations: int, *, min_age_s: float = GC_MIN_AGE_S,
                    now: float | None = None, dry_run: bool = False,
                    lock: WriterLock | None = None) -> GcReport:
    """Apply the module's rules; with `dry_run`, only report what would be deleted.

    `lock`: the writer lock the caller holds; None takes it for the collection (raising
    `WriterLockHeld` while a live run holds it). A dry run needs no lock."""
    if keep_generations < 1:
        raise ValueError(f"keep_generations must be >= 1, got {keep_generations}")
    if lock is None and not dry_run:
        with acquire_writer_lock(layout, "garbage collection") as own:
            return _collect(layout, keep_generations, min_age_s, now, dry_run, own)
    return _collect(layout, keep_generations, min_age_s, now, dry_run, lock)


def _collect(layout: IndexLayout, keep_generations: int, min_age_s: float, now: float | None,
             dry_run: bool, lock: WriterLock | None) -> GcReport:
    now = time.time() if now is None else now
    current = read_current_generation(layout)
    report = GcReport(current=current, dry_run=dry_run)
    generations = list_generations(layout)
    committed = [g for g in generations if current is not None and g <= current]
    leased = leased_generations(layout, now) & set(generations)
    kept = set(committed[-keep_generations:]) | leased | ({current} if current is not None else set())
    doomed = [g for g in committed if g not in kept]
    for g in generations:
        if current is None or g > current:
            if age_s(layout.manifest(g), now) >= min_age_s:
                doomed.append(g)
            else:
                kept.add(g)
                report.deferred.append(f"manifests/{generation_file_name(g)}")
    referenced = {s.name for g in kept for s in read_manifest(layout, g).shards}
    report.kept_generations = sorted(kept)
    report.leased_generations = sorted(leased)
    report.deleted_generations = sorted(doomed)

    shards = []
    for name in list_dir(layout.shards()):
        parsed = parse_shard_name(name)
        if parsed is None or name in referenced:
            continue
        in_flight = current is None or parsed[0] > current
        if in_flight and age_s(layout.shard(name), now) < min_age_s:
            report.deferred.append(f"shards/{name}")
            continue
        shards.append(name)
    report.deleted_shards = shards
    staging = layout.root.child("staging")
    for plan_id in list_dir(staging):
        if age_s(staging.child(plan_id), now) >= min_age_s:
            report.deleted_staging.append(plan_id)
        else:
            report.deferred.append(f"staging/{plan_id}")

    if not dry_run:
        lock.check("garbage collection")
        for g in report.deleted_generations:       # manifests first: see the module docstring
            remove(layout.manifest(g), recursive=False)
        fault_point("gc:mid")
        for g in report.deleted_generations:
            remove(layout.rejects(g))
        for name in report.deleted_shards:
            remove(layout.shard(name))
        for plan_id in report.deleted_staging:
            remove(staging.child(plan_id))
    log.info("gc %s: kept generations %s (leased %s); %s generations %s, %d shards, %d staging "
             "folders; %d deferred as too young", layout.url, report.kept_generations,
             report.leased_generations, "would delete" if dry_run else "deleted",
             report.deleted_generations, len(report.deleted_shards), len(report.deleted_staging),
             len(report.deferred))
    return report


def collect_garbage_after_commit(layout: IndexLayout, keep_generations: int,
                                 min_age_s: float = GC_MIN_AGE_S,
                                 lock: WriterLock | None = None) -> dict:
    """Garbage collection right after a job committed a generation, under the job's lock.

    Its failure is logged and reported, never raised: the new generation is committed either way.
    """
    try:
        return collect_garbage(layout, keep_generations, min_age_s=min_age_s, lock=lock).to_json()
    except Exception as exc:  # noqa: BLE001 - reported in the summary and the log
        log.error("garbage collection of %s failed: %s: %s", layout.url, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
