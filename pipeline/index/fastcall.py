"""How the indexes call numba kernels: without re-resolving argument types on every call
(`FastCall`), and on a scoped number of threads (`numba_threads`).

A numba dispatcher types each argument of each call before running the compiled code:
about 0.4 us an argument, so ~15 us for a search kernel's ~40 arrays, which is most of a
single query's overhead. Where the caller guarantees the types never change (arrays the
index allocated itself, queries canonicalised by `validate`), `FastCall` resolves them
once through the dispatcher and then calls the compiled entry point directly.
"""

from __future__ import annotations

import contextlib
from typing import Any, Hashable, Iterator

import numba


@contextlib.contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """Run the body on ``threads`` numba threads (capped at the pool's size), then restore the
    caller's setting: the count is per calling thread and outlives the call otherwise (a Ray
    worker process runs many tasks)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class FastCall:
    """``fast(key, *args)``: the first call with a ``key`` goes through the dispatcher
    (compiling if needed) and remembers the compiled overload for the exact argument types;
    later calls with that ``key`` skip type resolution. ``key`` must determine every
    argument's numba type (dtype, dimensions, C-contiguity; scalars' Python types)."""

    def __init__(self, dispatcher) -> None:
        self._dispatcher = dispatcher
        self._entries: dict[Hashable, Any] = {}

    def __call__(self, key: Hashable, *args: Any) -> Any:
        entry = self._entries.get(key)
        if entry is not None:
            return entry(*args)
        result = self._dispatcher(*args)
        signature = tuple(numba.typeof(a) for a in args)
        self._entries[key] = self._dispatcher.get_overload(signature)
        return result
