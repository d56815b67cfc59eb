"""Change detection: which documents of a new corpus snapshot are added, changed, unchanged,
and which documents of the live (base) generation are gone.

A document is identified by its id and compared by its content fingerprint (blake2b-64 of
`document_text`, the same `fingerprint_texts` the postings store).

1. `load_base_partitions`: the base table (128-bit id hash, fingerprint, shard, row: 32
   bytes a document) is split by id-hash partition, as the duplicate search splits ids
   (`pipeline.batch.dedup`), so no process ever holds it whole. P = 2^b partitions take
   the top b bits of the first hash word, P chosen from the base size
   (`partition_count`: about `PARTITION_BYTES` a partition). One Ray task per base shard
   reads only its ids and fingerprints (not its vectors) and returns them already split
   into P pieces (`num_returns=P`); P `BaseTablePartition` actors are each built from
   their pieces (object refs passed straight to them, never fetched by the driver), sort
   them by id hash and answer lookups in their range. The driver holds only refs and
   actor handles; the actors are killed after staging, also when it fails.
2. `classify_batch` runs in the Ray Data pipeline between read and tokenize, block by
   block: it fingerprints each row, looks its id hashes up (`lookup_base`: one call per
   partition the block touches, with only that partition's keys), attaches the base
   location (`base_shard`, `base_row`; -1 when the id is new) and nulls the text of
   unchanged documents, so the encoder skips them (`pipeline.batch.stages`).
3. After staging, `route_units` (one Ray task per read unit) turns the staged rows into
   claims on base slots; `resolve_claims` merges them: a base document is kept when some
   row claims it, replaced when that row was re-encoded, deleted when none does. Ids are
   compared by 128-bit hash (`id_keys`): at 1e9 documents the chance that any two share
   one is about 1e-21, so 64-bit collisions (about 3% at that size) are told apart and
   never stop or corrupt a run. Should two ids ever share all 128 bits, a new id claims a
   base slot only if it is free, else it is indexed as an added document.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.batch.plan import JobPlan
from pipeline.batch.staging import read_staged_unit
from pipeline.catalog import IndexLayout, Manifest
from pipeline.errors import UserError
from pipeline.format.postings import fingerprint_texts, hash_strings
from pipeline.catalog.manifest import ShardEntry

log = logging.getLogger(__name__)


class ReindexError(UserError, RuntimeError):
    """Re-indexing cannot go on safely; nothing was committed. The message says what to do."""


TEST_HASH_BITS_ENV = "LSR_TEST_ID_HASH_BITS"
"""Tests only: keep this many bits of the first 64-bit word of every id hash, which forces
64-bit collisions (the second word still tells the ids apart)."""


def id_keys(ids) -> np.ndarray:
    """128-bit id hashes as uint64 (n, 2) (`hash_strings`, two words)."""
    keys = hash_strings(list(ids), words=2)
    bits = os.environ.get(TEST_HASH_BITS_ENV)
    if bits:
        keys[:, 0] &= np.uint64((1 << int(bits)) - 1)
    return keys


@dataclass(frozen=True)
class BaseTable:
    """Base documents sorted by 128-bit id hash: one partition's table (or, in tests, a whole one)."""

    id_hash: np.ndarray       # uint64 (n,): first word of the id hash, ascending
    id_hash2: np.ndarray      # uint64 (n,): second word, ascending within equal first words
    fingerprint: np.ndarray   # uint64 (n,)
    shard: np.ndarray         # int32 (n,): position of the document's shard in the base manifest
    row: np.ndarray           # int64 (n,): its row in that shard

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Positions in the table of the (k, 2) id hashes `keys`, -1 where absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self.id_hash) or not len(keys):
            return out
        lo = np.searchsorted(self.id_hash, keys[:, 0], side="left")
        hi = np.searchsorted(self.id_hash, keys[:, 0], side="right")
        one = np.flatnonzero(hi - lo == 1)
        match = self.id_hash2[lo[one]] == keys[one, 1]
        out[one[match]] = lo[one[match]]
        for i in np.flatnonzero(hi - lo > 1):       # first words collide: compare the second
            at = lo[i] + np.searchsorted(self.id_hash2[lo[i]:hi[i]], keys[i, 1])
            if at < hi[i] and self.id_hash2[at] == keys[i, 1]:
                out[i] = at
        return out

    def locate(self, keys: np.ndarray) -> BaseHits:
        """Fingerprint, shard and row of each of the (k, 2) id hashes `keys` (`found` False:
        absent, the other fields then meaningless)."""
        if not len(self.id_hash):
            return BaseHits.absent(len(keys))
        pos = self.lookup(keys)
        found = pos >= 0
        at = np.where(found, pos, 0)
        return BaseHits(self.fingerprint[at], self.shard[at], self.row[at], found)


@dataclass(frozen=True)
class BaseHits:
    """What a lookup found, one entry per key asked."""

    fingerprint: np.ndarray   # uint64 (k,)
    shard: np.ndarray         # int32 (k,)
    row: np.ndarray           # int64 (k,)
    found: np.ndarray         # bool (k,)

    @staticmethod
    def absent(n: int) -> BaseHits:
        return BaseHits(np.zeros(n, np.uint64), np.full(n, -1, np.int32),
                        np.full(n, -1, np.int64), np.zeros(n, dtype=bool))


def sorted_base_table(keys: np.ndarray, fingerprints: np.ndarray, shards: np.ndarray,
                      rows: np.ndarray) -> tuple[BaseTable, int]:
    """A `BaseTable` of these documents, and how many were left out because their ids share
    all 128 bits with another's (about 1e-21 at 1e9 documents): such ids cannot be told
    apart, so all of them are treated as new ids and indexed as added (never merged)."""
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    table = BaseTable(keys[order, 0].copy(), keys[order, 1].copy(), fingerprints[order],
                      shards[order], rows[order])
    same = (table.id_hash[1:] == table.id_hash[:-1]) & (table.id_hash2[1:] == table.id_hash2[:-1])
    if not bool(np.any(same)):
        return table, 0
    dup = np.flatnonzero(same)
    bad = np.union1d(dup, dup + 1)
    keep = np.ones(len(table.id_hash), dtype=bool)
    keep[bad] = False
    return BaseTable(*(a[keep] for a in (table.id_hash, table.id_hash2, table.fingerprint,
                                         table.shard, table.row))), len(bad)


# --------------------------------------------------------------------------- partitions
PARTITION_BYTES = 256 << 20
"""Target size of one base-table partition: 32 bytes a document, so ~8 M documents; 1e9
documents make 128 partitions of ~250 MB."""
MAX_PARTITION_BITS = 12
"""At most 4,096 partitions (beyond ~1e12 documents they grow past the target instead)."""
BYTES_PER_DOC = 32


def partition_bits(n_docs: int, partition_bytes: int = PARTITION_BYTES) -> int:
    """b, for P = 2^b partitions: the fewest that keep each under `partition_bytes` (id
    hashes are uniform, so each holds about n_docs / P documents)."""
    wanted = max(1, -(-n_docs * BYTES_PER_DOC // partition_bytes))
    return min(MAX_PARTITION_BITS, (wanted - 1).bit_length())


def partition_of(first_words: np.ndarray, bits: int) -> np.ndarray:
    """The partition of each id hash: the top `bits` bits of its first word (so partition p
    holds one contiguous range of the sorted hash space)."""
    if bits == 0:
        return np.zeros(len(first_words), dtype=np.int64)
    return (np.asarray(first_words, np.uint64) >> np.uint64(64 - bits)).astype(np.int64)


def split_by_partition(keys: np.ndarray, bits: int) -> list[np.ndarray]:
    """Per partition (2^bits of them), the positions of the (k, 2) id hashes `keys` in it."""
    part = partition_of(keys[:, 0], bits)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange((1 << bits) + 1))
    return [order[bounds[p]:bounds[p + 1]] for p in range(1 << bits)]


@ray.remote
class BaseTablePartition:
    """One id-hash range of the base table: fed pieces by the shard tasks, then sealed
    (sorted) and asked for lookups of keys in its range."""

    def __init__(self, partition: int, bits: int) -> None:
        self.partition, self.bits = partition, bits
        self.pieces: list[tuple[np.ndarray, ...]] = []
        self.table: BaseTable | None = None

    def add(self, keys: np.ndarray, fingerprints: np.ndarray, shards: np.ndarray,
            rows: np.ndarray) -> None:
        if not bool(np.all(partition_of(keys[:, 0], self.bits) == self.partition)):
            raise ValueError(f"partition {self.partition}: got keys of another partition")
        self.pieces.append((keys, fingerprints, shards, rows))

    def seal(self) -> tuple[int, int]:
        """Sort the pieces into the table: (documents held, documents left out as sharing a
        128-bit id hash)."""
        if self.pieces:
            keys, fingerprints, shards, rows = (np.concatenate(p) for p in zip(*self.pieces))
        else:
            keys, fingerprints = np.zeros((0, 2), np.uint64), np.zeros(0, np.uint64)
            shards, rows = np.zeros(0, np.int32), np.zeros(0, np.int64)
        self.pieces = []
        self.table, shared = sorted_base_table(keys, fingerprints, shards, rows)
        return len(self.table.id_hash), shared

    def lookup(self, keys: np.ndarray) -> BaseHits:
        return self.table.locate(keys)

    def held_keys(self) -> np.ndarray:
        """Tests only: the (n, 2) id hashes this partition holds."""
        return np.stack([self.table.id_hash, self.table.id_hash2], axis=1)


@dataclass
class BasePartitions:
    """The driver's whole view of the base table: actor handles, never the documents."""

    bits: int
    actors: list                      # BaseTablePartition handles, partition order
    n_docs: int = 0                   # held by all partitions together (after `seal`)
    shared: int = 0                   # left out as sharing a 128-bit id hash (after `seal`)

    @staticmethod
    def start(bits: int) -> BasePartitions:
        # No CPU: a lookup is a few binary searches, and a CPU held idle by each actor would
        # starve the pipeline on small machines; SPREAD puts the partitions' memory on many nodes.
        return BasePartitions(bits, [BaseTablePartition.options(
            num_cpus=0, scheduling_strategy="SPREAD").remote(p, bits) for p in range(1 << bits)])

    def seal(self) -> None:
        sealed = ray.get([a.seal.remote() for a in self.actors])
        self.n_docs = sum(n for n, _ in sealed)
        self.shared = sum(s for _, s in sealed)

    def lookup(self, keys: np.ndarray) -> BaseHits:
        """One call per partition the keys touch, with only that partition's keys."""
        hits = BaseHits.absent(len(keys))
        wanted = [(p, at) for p, at in enumerate(split_by_partition(keys, self.bits)) if len(at)]
        answers = ray.get([self.actors[p].lookup.remote(keys[at]) for p, at in wanted])
        for (_, at), got in zip(wanted, answers):
            hits.fingerprint[at], hits.shard[at] = got.fingerprint, got.shard
            hits.row[at], hits.found[at] = got.row, got.found
        return hits

    def close(self) -> None:
        """Kill the actors (their memory goes with them)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def send_pieces(actors: list, bits: int, keys: np.ndarray, fingerprints: np.ndarray,
                shards: np.ndarray, rows: np.ndarray) -> None:
    """Hand each partition's actor its share of these documents, and wait until it has it."""
    ray.get([actors[p].add.remote(keys[at], fingerprints[at], shards[at], rows[at])
             for p, at in enumerate(split_by_partition(keys, bits)) if len(at)])


def read_shard_keys(layout: IndexLayout, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]:
    """(doc ids, fingerprints) of a committed shard, without reading its vectors."""
    import zarr

    from pipeline.objstore import zarr_store

    group = zarr.open_group(zarr_store(layout.postings(entry.name), read_only=True), mode="r")
    ids = np.asarray(group["doc_ids"][:], dtype=object)
    fingerprints = np.asarray(group["fingerprints"][:], dtype=np.uint64)
    if len(ids) != entry.n_docs or len(fingerprints) != entry.n_docs:
        raise ReindexError(f"shard {entry.name}: manifest says {entry.n_docs} documents, postings "
                           f"hold {len(ids)} ids and {len(fingerprints)} fingerprints")
    return ids, fingerprints


@ray.remote
def _feed_partitions(layout: IndexLayout, entry: ShardEntry, position: int, bits: int,
                     actors: list) -> int:
    """One base shard's keys, split by partition and handed to the partitions' actors (the
    data goes from this task to the actors, never through the driver)."""
    ids, fingerprints = read_shard_keys(layout, entry)
    send_pieces(actors, bits, id_keys(ids), fingerprints, np.full(len(ids), position, np.int32),
                np.arange(len(ids), dtype=np.int64))
    return len(ids)


def _collect_outcomes(tasks: list) -> None:
    """Fetch every task's outcome, errors included: Ray logs each error nobody fetched as
    unhandled. The first failure is already on its way to the caller."""
    for task in tasks:
        try:
            ray.get(task)
        except Exception:
            pass


def load_base_partitions(layout: IndexLayout, base: Manifest, read_cpus: float = 0.25,
                         partition_bytes: int = PARTITION_BYTES) -> BasePartitions:
    """Step 1 of the module docstring. The caller closes the result; on failure here the
    actors are killed before the error propagates."""
    partitions = BasePartitions.start(partition_bits(sum(s.n_docs for s in base.shards),
                                                     partition_bytes))
    feeds = []
    try:
        feeds = [_feed_partitions.options(num_cpus=read_cpus).remote(
            layout, entry, i, partitions.bits, partitions.actors) for i, entry in enumerate(base.shards)]
        ray.get(feeds)
        partitions.seal()
    except BaseException:
        for feed in feeds:
            ray.cancel(feed)              # a feed still running would go on sending to the actors
        partitions.close()
        _collect_outcomes(feeds)
        raise
    if partitions.shared:
        log.warning("base generation %d: %d document ids share a 128-bit hash; they are "
                    "re-encoded as added documents", base.generation, partitions.shared)
    log.info("base generation %d: %d documents in %d shards, %d lookup partition(s)",
             base.generation, partitions.n_docs, len(base.shards), len(partitions.actors))
    return partitions


def lookup_base(table: BaseTable | BasePartitions, doc_ids) -> BaseHits:
    """Where the base generation holds each id (a local `BaseTable` in tests)."""
    keys = id_keys(doc_ids)
    return table.lookup(keys) if isinstance(table, BasePartitions) else table.locate(keys)


def classify_batch(batch: pa.Table, table) -> pa.Table:
    """Step 2 of the module docstring (a Ray Data stage between read and tokenize).

    `table` is the `BasePartitions` of `load_base_partitions` (or, in tests, a `BaseTable`).
    """
    if "fingerprint" in batch.column_names:   # pre-encoded vectors, kept fields: the read stage's
        fingerprints = batch.column("fingerprint").to_numpy()
        batch = batch.drop_columns(["fingerprint"])
    else:
        fingerprints = fingerprint_texts(batch.column("text").to_pylist())
    hits = lookup_base(table, batch.column("doc_id").to_pylist())
    found = hits.found
    shard = np.where(found, hits.shard, -1).astype(np.int32)
    row = np.where(found, hits.row, -1).astype(np.int64)
    unchanged = found & (hits.fingerprint == fingerprints)
    text = pc.if_else(pa.array(unchanged), pa.scalar(None, pa.string()), batch.column("text"))
    return (batch.set_column(batch.column_names.index("text"), "text", text)
            .append_column("fingerprint", pa.array(fingerprints, pa.uint64()))
            .append_column("base_shard", pa.array(shard, pa.int32()))
            .append_column("base_row", pa.array(row, pa.int64())))


@dataclass
class UnitRoutes:
    """Where the staged rows of one read unit go (duplicates already dropped)."""

    unit: int
    kept: tuple[np.ndarray, np.ndarray]               # unchanged: (base shard, base row)
    changed: tuple[np.ndarray, np.ndarray, np.ndarray]  # (base shard, base row, unit row)
    added: np.ndarray                                  # unit rows of new ids


@ray.remote
def _route_unit(plan: JobPlan, layout: IndexLayout, unit: int, drop_rows: list[int]) -> UnitRoutes:
    table = read_staged_unit(plan, layout, unit, columns=["row", "base_shard", "base_row", "encoded"])
    if table.num_rows == 0:  # a unit without valid records stages no parts
        empty = np.zeros(0, np.int64)
        return UnitRoutes(unit, (empty.astype(np.int32), empty),
                          (empty.astype(np.int32), empty, empty), empty)
    rows = table.column("row").to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    keep[np.asarray(drop_rows, dtype=np.int64)] = False
    shard = table.column("base_shard").to_numpy()[keep]
    base_row = table.column("base_row").to_numpy()[keep]
    encoded = table.column("encoded").to_numpy(zero_copy_only=False)[keep]
    rows = rows[keep]
    in_base = shard >= 0
    if not encoded[~in_base].all():
        raise ReindexError(f"read unit {unit}: a new document was staged without its vector; "
                           f"re-run to redo the unit")
    kept, changed = in_base & ~encoded, in_base & encoded
    return UnitRoutes(unit, (shard[kept], base_row[kept]),
                      (shard[changed], base_row[changed], rows[changed]), rows[~in_base])


def route_units(plan: JobPlan, layout: IndexLayout, drop: dict[int, list[int]],
                cpus: float = 0.25) -> list[UnitRoutes]:
    """Step 3's map: the routes of every read unit, in unit order."""
    return ray.get([_route_unit.options(num_cpus=cpus).remote(plan, layout, u, drop.get(u, []))
                    for u in range(len(plan.shards))])


@dataclass
class BaseShardFate:
    """What happens to the documents of one base shard."""

    kept: np.ndarray                 # bool (n_docs,): still in the corpus (unchanged or changed)
    replaced_rows: list[np.ndarray] = field(default_factory=list)   # base rows re-encoded...
    replaced_by: list[np.ndarray] = field(default_factory=list)     # ...by (unit, row) pairs

    @property
    def n_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def n_changed(self) -> int:
        return sum(len(r) for r in self.replaced_rows)

    def replacements(self) -> tuple[np.ndarray, np.ndarray]:
        """(base rows, (k, 2) unit/row pairs), by base row."""
        if not self.replaced_rows:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
        rows = np.concatenate(self.replaced_rows)
        by = np.concatenate(self.replaced_by)
        order = np.argsort(rows, kind="stable")
        return rows[order], by[order]


@dataclass
class Diff:
    fates: list[BaseShardFate]       # per base shard, base manifest order
    added: np.ndarray                # (k, 2) int64 (unit, row) of added documents, corpus order
    unchanged: int
    changed: int

    @property
    def deleted(self) -> int:
        return sum(len(f.kept) - f.n_kept for f in self.fates)


def resolve_claims(base: Manifest, routes: list[UnitRoutes]) -> Diff:
    """Step 3's merge: every base slot claimed at most once, in corpus order."""
    fates = [BaseShardFate(kept=np.zeros(entry.n_docs, dtype=bool)) for entry in base.shards]
    unchanged = 0
    for r in routes:
        shards, rows = r.kept
        for s in np.unique(shards):
            slots = rows[shards == s]
            if fates[s].kept[slots].any() or len(np.unique(slots)) != len(slots):
                raise ReindexError("two unchanged documents claim one base document (an id hash "
                                   "collision); re-index with --full")
            fates[s].kept[slots] = True
        unchanged += len(rows)
    added = [np.stack([np.full(len(r.added), r.unit, np.int64), r.added], axis=1) for r in routes]
    changed = 0
    for r in routes:
        shards, rows, unit_rows = r.changed
        for s in np.unique(shards):
            sel = shards == s
            slots, by_rows = rows[sel], unit_rows[sel]
            free = np.zeros(len(slots), dtype=bool)
            free[np.unique(slots, return_index=True)[1]] = True   # first claim in corpus order
            free &= ~fates[s].kept[slots]
            fates[s].kept[slots[free]] = True
            fates[s].replaced_rows.append(slots[free])
            fates[s].replaced_by.append(np.stack([np.full(int(free.sum()), r.unit, np.int64),
                                                  by_rows[free]], axis=1))
            changed += int(free.sum())
            if not free.all():
                # The slot is taken by an id sharing the hash: index this document as new.
                log.warning("read unit %d: %d changed document(s) share an id hash with another "
                            "base document; indexed as added", r.unit, int((~free).sum()))
                added.append(np.stack([np.full(int((~free).sum()), r.unit, np.int64),
                                       by_rows[~free]], axis=1))
    pairs = np.concatenate(added) if added else np.zeros((0, 2), np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs.reshape(0, 2)
    return Diff(fates=fates, added=pairs, unchanged=unchanged, changed=changed)
