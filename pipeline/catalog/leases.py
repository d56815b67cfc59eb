"""Serving leases: how a running server tells garbage collection which generations it uses.

A server writes ``ROOT/leases/<server-id>.json`` and rewrites it well before it expires::

    {"server_id": "lsr-host1", "generation": 7, "generations": [7, 6], "expires_at": 1790000000.0}

``generation`` is the generation answering requests; ``generations`` lists every generation
the server still holds (the answering one first, then one being loaded or drained during a
switch). Garbage collection must keep every generation named by an unexpired lease
(`leased_generations`); a lease that is not renewed (the server died) simply expires, so a
crashed server never pins a generation for longer than its time-to-live.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from pipeline.objstore import Location, StorageError, list_dir, read_json, remove, write_json_atomic
from pipeline.catalog.layout import IndexLayout

log = logging.getLogger(__name__)

LEASES_DIR = "leases"
_SERVER_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True)
class Lease:
    server_id: str
    generation: int                 # the generation answering requests
    generations: tuple[int, ...]    # every generation held (answering first)
    expires_at: float               # unix time

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def to_json(self) -> dict:
        return {"server_id": self.server_id, "generation": self.generation,
                "generations": list(self.generations), "expires_at": self.expires_at}


def check_server_id(server_id: str) -> str:
    if not isinstance(server_id, str) or not _SERVER_ID.match(server_id):
        raise ValueError(f"server id must be 1-128 characters of [A-Za-z0-9._-], got {server_id!r}")
    return server_id


def lease_location(layout: IndexLayout, server_id: str) -> Location:
    return layout.root.child(LEASES_DIR, f"{check_server_id(server_id)}.json")


def write_lease(layout: IndexLayout, server_id: str, generation: int, ttl_s: float,
                also: tuple[int, ...] | list[int] = ()) -> Lease:
    """Write (or renew) this server's lease on `generation` plus the generations in `also`."""
    if ttl_s <= 0:
        raise ValueError(f"lease ttl_s must be > 0, got {ttl_s}")
    held = (int(generation),) + tuple(sorted({int(g) for g in also} - {int(generation)}, reverse=True))
    lease = Lease(check_server_id(server_id), int(generation), held, time.time() + ttl_s)
    write_json_atomic(lease_location(layout, server_id), lease.to_json())
    return lease


def release_lease(layout: IndexLayout, server_id: str) -> None:
    """Remove this server's lease (clean shutdown); a missing lease is not an error."""
    remove(lease_location(layout, server_id), recursive=False)


def _parse(obj: object, where: str) -> Lease:
    if not isinstance(obj, dict) or not isinstance(obj.get("generation"), int) \
            or not isinstance(obj.get("expires_at"), (int, float)):
        raise ValueError(f"{where}: not a lease (needs integer generation and numeric expires_at)")
    generations = obj.get("generations", [obj["generation"]])
    if not isinstance(generations, list) or not all(isinstance(g, int) for g in generations):
        raise ValueError(f"{where}: lease generations must be a list of integers")
    server_id = str(obj.get("server_id", where.rsplit("/", 1)[-1].removesuffix(".json")))
    held = (obj["generation"],) + tuple(g for g in generations if g != obj["generation"])
    return Lease(server_id, obj["generation"], held, float(obj["expires_at"]))


def read_leases(layout: IndexLayout) -> list[Lease]:
    """Every lease file under ROOT/leases (expired ones included), sorted by server id.

    An unreadable lease file raises: garbage collection must not guess what it protects.
    """
    folder = layout.root.child(LEASES_DIR)
    leases = []
    for name in list_dir(folder):
        if not name.endswith(".json") or name.startswith("."):
            continue  # temporary files of an atomic write in progress
        loc = folder.child(name)
        try:
            obj = read_json(loc)
        except FileNotFoundError:
            continue  # released between the listing and the read
        except StorageError as exc:
            raise ValueError(f"{loc.url}: unreadable lease ({exc})") from exc
        leases.append(_parse(obj, loc.url))
    return sorted(leases, key=lambda lease: lease.server_id)


def leased_generations(layout: IndexLayout, now: float | None = None) -> set[int]:
    """Generations named by any unexpired lease: garbage collection must keep these."""
    now = time.time() if now is None else now
    return {g for lease in read_leases(layout) if not lease.expired(now) for g in lease.generations}
