"""`pipeline.serve.batching.MicroBatcher` without Ray: batches form from concurrent
submissions, each caller gets its own result or exception, keys never mix, a lone request
runs at once. (Through a real endpoint: tests/test_serve_load.py `TestEmbedded`.)"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pipeline.serve.batching import MicroBatcher


def _recording_run(delay_s: float = 0.02):
    calls: list[list] = []

    def run(items):
        calls.append(list(items))
        time.sleep(delay_s)                 # a worker thread: the loop keeps collecting
        return [ValueError(f"bad {x}") if "bad" in (x if isinstance(x, tuple) else (x,))
                else (x, threading.get_ident()) for x in items]
    return run, calls


def test_concurrent_submissions_form_batches_and_get_their_own_results():
    run, calls = _recording_run()
    batcher = MicroBatcher(run, max_size=4)

    async def main():
        first = asyncio.ensure_future(batcher.submit("k", 0))
        await asyncio.sleep(0.005)          # the lone first request is already running
        rest = await asyncio.gather(*(batcher.submit("k", i) for i in range(1, 10)))
        return [await first, *rest]

    results = asyncio.run(main())
    assert [r[0] for r in results] == list(range(10))
    assert calls[0] == [0]                  # ran at once, alone
    # the rest queued while it ran: batches of at most 4, in arrival order
    assert [x for c in calls for x in c] == list(range(10))
    assert [len(c) for c in calls[1:]] == [4, 4, 1]
    assert (batcher.batches, batcher.items) == (4, 10)


def test_errors_go_to_their_own_callers_and_keys_never_mix():
    run, calls = _recording_run()
    batcher = MicroBatcher(run, max_size=8)
    items = [("a", 1), ("a", "bad"), ("b", 2), ("a", 3), ("b", 4)]

    async def main():
        return await asyncio.gather(*(batcher.submit(key, (key, x)) for key, x in items),
                                    return_exceptions=True)

    results = asyncio.run(main())
    for (key, x), result in zip(items, results):
        if x == "bad":
            assert isinstance(result, ValueError)
        else:
            assert result[0] == (key, x)
    assert all(len({key for key, _ in call}) == 1 for call in calls)
    assert sorted(len(c) for c in calls) == [2, 3]


def test_a_failing_run_fails_every_caller_of_its_batch_only():
    def run(items):
        if 99 in items:
            raise RuntimeError("boom")
        return items

    batcher = MicroBatcher(run, max_size=8)

    async def main():
        first = await batcher.submit("k", 1)
        failed = await asyncio.gather(batcher.submit("k", 99), return_exceptions=True)
        after = await batcher.submit("k", 2)
        return first, failed, after

    first, failed, after = asyncio.run(main())
    assert first == 1 and after == 2
    assert isinstance(failed[0], RuntimeError)


def test_validation():
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_size=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_size=2, wait_s=-1)
