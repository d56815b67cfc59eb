"""Crash safety of `lsr index` and `lsr reindex` at every step, and one writer per root.

Real processes on real data: each run is `lsr` in a subprocess with its own local Ray; a
named fault point (`LSR_FAULT`, `pipeline.faults`) makes it SIGKILL itself (and, from a Ray
worker, its driver) at that step; the same command is then run again, and its generation
must equal a never-killed run's: the same manifest counts and the same top-10 for 20 real
queries. The default run covers a representative subset; the whole matrix (every point,
both index kinds, both jobs) is marked slow.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_same_ranking
from ray_procs import descendants, subprocess_env

from pipeline.catalog import IndexLayout, read_current_generation, read_manifest
from pipeline.faults import POINTS

LSR = [sys.executable, "-m", "pipeline.cli"]
N_DOCS = 120          # cisi slice: 3 shards of 40, small enough for many real runs
INDEX_ARGS = ["--shard-size", "40", "--block-rows", "20", "--keep-generations", "1",
              "--gc-min-age-s", "0"]
REINDEX_ARGS = ["--keep-generations", "1", "--gc-min-age-s", "0", "--block-rows", "20"]


def _env(**extra: str) -> dict:
    env = subprocess_env(**extra)
    env.pop("LSR_DRIVER_PID", None)
    if "LSR_FAULT" not in extra:
        env.pop("LSR_FAULT", None)
    return env


def run_lsr(args: list[str], fault: str | None = None, timeout_s: float = 600,
            **env: str) -> subprocess.CompletedProcess:
    """`lsr ARGS` as a real process; everything it started is killed by PID once it ends."""
    extra = dict(env, **({"LSR_FAULT": fault} if fault else {}))
    proc = subprocess.Popen([*LSR, *args], env=_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    victims: set[int] = set()
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        victims.update(descendants(proc.pid))
        time.sleep(0.2)
    victims.update(descendants(proc.pid))
    import psutil
    for pid in [proc.pid, *victims]:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _write(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="module")
def collection(data_dir, tmp_path_factory):
    """A cisi slice, a changed snapshot of it, and 20 real queries."""
    folder = tmp_path_factory.mktemp("crash-data")
    docs = [json.loads(line) for line in open(data_dir / "cisi" / "corpus.jsonl", encoding="utf-8")]
    base = docs[:N_DOCS]
    changed = [dict(r, text=r["text"] + " revised") if i % 17 == 3 else r
               for i, r in enumerate(base) if i % 23 != 5] + docs[N_DOCS:N_DOCS + 15]
    queries = [json.loads(line)["text"] for line in open(data_dir / "cisi" / "queries.jsonl",
                                                         encoding="utf-8")][:20]
    return {"v1": _write(folder / "v1.jsonl", base), "v2": _write(folder / "v2.jsonl", changed),
            "queries": queries}


def outcome(root: Path, queries: list[str]):
    """What a run produced: the live manifest's counts, and the top-10 of every query."""
    from pipeline.search import ShardedIndex

    layout = IndexLayout.at(str(root))
    manifest = read_manifest(layout)
    counts = {k: v for k, v in manifest.counts.items()}
    index = ShardedIndex.open(str(root))
    results = {}
    for exact in (True, False):
        hits = index.search(queries, k=10, exact=exact)
        results[exact] = [([h.doc_id for h in q], [h.score for h in q]) for q in hits]
    return counts, results, manifest.index["kind"]


def assert_same_outcome(got, want) -> None:
    (c1, r1, k1), (c2, r2, k2) = got, want
    assert c1 == c2 and k1 == k2
    for exact in (True, False):
        for (ids_a, sc_a), (ids_b, sc_b) in zip(r1[exact], r2[exact]):
            assert_same_ranking(ids_a, sc_a, ids_b, sc_b)


@pytest.fixture(scope="module")
def clean(collection, tmp_path_factory):
    """Never-killed runs, made on first use: per index kind, `lsr index` of v1 ("index"), and
    `lsr reindex` of v2 over a copy of it ("reindex")."""
    queries = collection["queries"]
    cache: dict = {}

    def get(kind: str, what: str = "index") -> dict:
        if kind not in cache:
            base = tmp_path_factory.mktemp(f"clean-{kind}") / "base"
            out = run_lsr(["index", str(collection["v1"]), str(base), "--index-kind", kind, *INDEX_ARGS])
            assert out.returncode == 0, out.stderr[-3000:]
            cache[kind] = {"base": base, "index": outcome(base, queries)}
        runs = cache[kind]
        if what == "reindex" and "reindex" not in runs:
            reindexed = runs["base"].parent / "reindexed"
            shutil.copytree(runs["base"], reindexed)
            out = run_lsr(["reindex", str(collection["v2"]), str(reindexed), *REINDEX_ARGS])
            assert out.returncode == 0, out.stderr[-3000:]
            runs["reindex"] = outcome(reindexed, queries)
        return runs

    return get


def killed_then_rerun(args: list[str], root: Path, point: str) -> None:
    killed = run_lsr(args, fault=point)
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-3000:])
    again = run_lsr(args)
    assert again.returncode == 0, (point, again.stderr[-3000:])
    assert not (root / "staging").exists()
    assert read_current_generation(IndexLayout.at(str(root))) is not None


def check_index_point(collection, clean, tmp_path, point: str, kind: str) -> None:
    want = clean(kind)["index"]
    root = tmp_path / "idx"
    args = ["index", str(collection["v1"]), str(root), "--index-kind", kind, *INDEX_ARGS]
    if point == "gc:mid":       # GC deletes something only when a generation is replaced
        assert run_lsr(args).returncode == 0
        args = [*args, "--values-dtype", "float16"]          # another plan, a new generation
        want = None
    killed_then_rerun(args, root, point)
    got = outcome(root, collection["queries"])
    if want is None:   # float16 values: same documents and counts, rankings of float16 vectors
        assert got[0] == clean(kind)["index"][0]
        layout = IndexLayout.at(str(root))
        live = read_manifest(layout)
        names = {s.name for s in live.shards}
        on_disk = {p.name for p in (root / "shards").iterdir()}
        assert on_disk == names, "GC left shards no kept manifest names"
    else:
        assert_same_outcome(got, want)


def check_reindex_point(collection, clean, tmp_path, point: str, kind: str) -> None:
    runs = clean(kind, "reindex")
    root = tmp_path / "idx"
    shutil.copytree(runs["base"], root)
    args = ["reindex", str(collection["v2"]), str(root), *REINDEX_ARGS]
    killed_then_rerun(args, root, point)
    # The base generation served until CURRENT moved; the re-run's result is the clean one.
    assert_same_outcome(outcome(root, collection["queries"]), runs["reindex"])


# The default run: one commit-phase kill of `lsr index` (~2.5 min: a clean run, a killed one,
# its re-run). The re-indexing kill below is slow-marked (~1 min more) to keep the default
# suite's budget; test_reindex.py's default tests cover the re-index commit path itself.
DEFAULT_INDEX_POINTS = [("commit:mid-index-save", "blocked")]
DEFAULT_REINDEX_POINTS = [("commit:after-index-save", "blocked")]


@pytest.mark.parametrize("point,kind", DEFAULT_INDEX_POINTS)
def test_index_killed_in_the_commit_phase_reruns_to_the_clean_result(collection, clean, tmp_path,
                                                                      point, kind):
    check_index_point(collection, clean, tmp_path, point, kind)


@pytest.mark.slow  # ~1 min: a clean re-index, a killed one and its re-run
@pytest.mark.parametrize("point,kind", DEFAULT_REINDEX_POINTS)
def test_reindex_killed_in_the_commit_phase_reruns_to_the_clean_result(collection, clean, tmp_path,
                                                                        point, kind):
    check_reindex_point(collection, clean, tmp_path, point, kind)


@pytest.mark.slow  # 14 killed runs and their re-runs: ~15 min on 2 cores
@pytest.mark.parametrize("kind", ["blocked", "exact"])
@pytest.mark.parametrize("point", POINTS)
def test_index_every_kill_point(collection, clean, tmp_path, point, kind):
    if (point, kind) in DEFAULT_INDEX_POINTS:
        pytest.skip("in the default run")
    check_index_point(collection, clean, tmp_path, point, kind)


@pytest.mark.slow  # 14 killed runs and their re-runs: ~12 min on 2 cores
@pytest.mark.parametrize("kind", ["blocked", "exact"])
@pytest.mark.parametrize("point", POINTS)
def test_reindex_every_kill_point(collection, clean, tmp_path, point, kind):
    if (point, kind) in DEFAULT_REINDEX_POINTS:
        pytest.skip("a test of its own")
    check_reindex_point(collection, clean, tmp_path, point, kind)


# --------------------------------------------------------------------------- writer lock
HOLD = """
import sys, time
from pipeline.catalog import IndexLayout, acquire_writer_lock
lock = acquire_writer_lock(IndexLayout.at(sys.argv[1]), "holder-test", ttl_s=float(sys.argv[2]))
print("held", flush=True)
time.sleep(600)
"""


def _holder(root: str, ttl_s: float, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, root, str(ttl_s)], env=_env(**env),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _second_writer_fails_naming_the_holder(args: list[str], holder_pid: int, env: dict) -> None:
    started = time.time()
    out = run_lsr(args, **env)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "being written by another run" in lines[0], out.stderr[-2000:]
    assert f"pid {holder_pid}" in lines[0] and "host " in lines[0] and "started 20" in lines[0]
    assert "Traceback" not in out.stderr
    assert time.time() - started < 120      # at once: before Ray or the model start


def test_second_writer_fails_fast_and_a_dead_holders_lock_is_taken_over_local(collection, tmp_path):
    root = str(tmp_path / "idx")
    holder = _holder(root, ttl_s=3.0)
    try:
        _second_writer_fails_naming_the_holder(["index", str(collection["v1"]), root], holder.pid, {})
        _second_writer_fails_naming_the_holder(["reindex", str(collection["v1"]), root], holder.pid, {})
    finally:
        holder.kill()
        holder.wait()
    # The killed holder stops renewing: after its TTL the lock is taken over.
    from pipeline.catalog import WriterLockHeld, acquire_writer_lock, collect_garbage

    layout = IndexLayout.at(root)
    deadline = time.time() + 30
    while True:
        try:
            lock = acquire_writer_lock(layout, "test", ttl_s=30)
            break
        except WriterLockHeld:
            assert time.time() < deadline
            time.sleep(0.5)
    # GC respects the lock: while this lock is held, a collection without it refuses.
    with pytest.raises(WriterLockHeld, match="pid"):
        collect_garbage(layout, keep_generations=1)
    lock.release()
    collect_garbage(layout, keep_generations=1)


def test_writer_lock_on_s3_is_exclusive_and_taken_over_after_ttl(collection, s3_server):
    from pipeline.catalog import WriterLockHeld, WriterLockLost, acquire_writer_lock

    root = f"s3://{s3_server['bucket']}/locks-test/idx"
    options = s3_server["storage_options"]
    layout = IndexLayout.at(root, options)
    holder = _holder(root, ttl_s=3.0, **s3_server["env"])
    try:
        _second_writer_fails_naming_the_holder(["index", str(collection["v1"]), root], holder.pid,
                                               s3_server["env"])
        with pytest.raises(WriterLockHeld, match=f"pid {holder.pid}"):
            acquire_writer_lock(layout, "test")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(3.5)
    first = acquire_writer_lock(layout, "first", ttl_s=1.0, renew=False)
    time.sleep(1.2)                                  # first stops renewing and expires
    second = acquire_writer_lock(layout, "second", ttl_s=30)
    with pytest.raises(WriterLockLost):
        first.check("moving CURRENT")
    second.check("moving CURRENT")
    second.release()
