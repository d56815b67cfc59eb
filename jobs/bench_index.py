"""Benchmark of the per-shard indexes against Seismic, in one process, on the same data.

    flock /tmp/lsr-bench.lock python jobs/bench_index.py [--synthetic 1000000]
        [--synthetic-queries 1000] [--real scifact,vaswani,cisi] [--cache /work/cache]
        [--grid small] [--out bench-output]

Systems, each measured on the same documents and queries in this run:

* ``blocked``: our `BlockedIndex` over a grid of build and search parameters;
* ``seismic``: ``pyseismic-lsr`` (`seismic.SeismicIndex`) over the same grid;
* ``exact``: our `ExactIndex` (the ground truth);
* ``scipy``: one sparse product per query (``q @ docs.T``) and a top-k selection.

Per point: build time; index memory (ours: ``nbytes``; Seismic: its own space report);
recall@10 against exact search over all queries; single-thread latency per query through
each library's single-query Python call (mean, p50, p99, over ``--latency-queries``
queries); single-thread batch time per query; batched throughput on all cores. Then, per
dataset: the Pareto table (latency vs recall), the ratio ours/Seismic of the best
single-thread latency reaching recall@10 >= 0.90 / 0.95 / 0.98 (with the memory of both
points), and a recall-vs-latency PNG in ``--out``. Prints the command, machine and date.

Real collections come from ``--cache``: ``encodings-<name>.npz`` (the test-fixture
format) or ``<name>.npz``; a collection found in neither is encoded with splade-tiny
(reference settings) from ``--data`` and cached there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.index import recall_at_k
from pipeline.testing.machine import describe_machine, machine_line

RECALL_TARGETS = (0.90, 0.95, 0.98)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    name: str
    docs: sp.csr_matrix
    queries: sp.csr_matrix
    source: str
    builds: str = ""


def _load_npz(path: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    z = np.load(path, allow_pickle=False)
    if "docs_data" in z:  # tests/conftest.py format
        mats = [sp.csr_matrix((z[f"{n}_data"], z[f"{n}_indices"], z[f"{n}_indptr"]),
                              shape=tuple(z[f"{n}_shape"])) for n in ("docs", "queries")]
    else:
        mats = [sp.csr_matrix((z["doc_data"], z["doc_indices"], z["doc_indptr"]),
                              shape=tuple(z["shape_docs"])),
                sp.csr_matrix((z["q_data"], z["q_indices"], z["q_indptr"]),
                              shape=tuple(z["shape_q"]))]
    return mats[0], mats[1]


def _encode(name: str, data_dir: str, cache: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    from pipeline.data.records import parse_record
    from pipeline.encode import SpladeEncoder

    folder = os.path.join(data_dir, name)
    with open(os.path.join(folder, "corpus.jsonl"), encoding="utf-8") as f:
        docs = [parse_record(json.loads(line))[1] for line in f]
    with open(os.path.join(folder, "queries.jsonl"), encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f]
    encoder = SpladeEncoder("splade-tiny", device="cpu", max_length=256, query_max_length=64)
    d, q = encoder.encode(docs), encoder.encode_queries(queries)
    os.makedirs(cache, exist_ok=True)
    np.savez(os.path.join(cache, f"{name}.npz"), doc_data=d.data, doc_indices=d.indices,
             doc_indptr=d.indptr, shape_docs=np.array(d.shape), q_data=q.data,
             q_indices=q.indices, q_indptr=q.indptr, shape_q=np.array(q.shape))
    return d, q


def load_real(name: str, cache: str, data_dir: str) -> Dataset:
    for fname in (f"encodings-{name}.npz", f"{name}.npz"):
        path = os.path.join(cache, fname)
        if os.path.exists(path):
            d, q = _load_npz(path)
            return Dataset(name, d, q, path)
    d, q = _encode(name, data_dir, cache)
    return Dataset(name, d, q, "encoded now (splade-tiny)")


# --------------------------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------------------------

@dataclass
class Point:
    system: str
    build: dict
    search: dict
    build_s: float
    memory_bytes: int
    recall: float
    lat_mean_us: float
    lat_p50_us: float
    lat_p99_us: float
    batch1_us: float
    qps_all_cores: float
    extra: dict = field(default_factory=dict)


def warm_up(search, threads: int) -> None:
    """Run ``search(n_queries, threads)`` once on one thread and once on the thread pool, so
    that no timed call pays for compiling, loading cached machine code or starting threads."""
    search(4, 1)
    search(2 * threads, threads)


def per_call_latency(call, n: int, warmup: int = 5) -> np.ndarray:
    """Wall-clock microseconds of call(i) for i in range(n), after a warm-up."""
    for i in range(min(warmup, n)):
        call(i)
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        call(i)
        out[i] = (time.perf_counter_ns() - t) / 1e3
    return out


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


@contextlib.contextmanager
def captured_stdout():
    """Capture what native code writes to file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        box = {}
        try:
            yield box
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# systems
# --------------------------------------------------------------------------------------------

def rows_of(q: sp.csr_matrix) -> list[sp.csr_matrix]:
    return [q[i] for i in range(q.shape[0])]


def bench_exact(ds: Dataset, k: int, n_lat: int, threads: int):
    from pipeline.index import ExactIndex

    build_s, index = timed(lambda: ExactIndex(ds.docs))
    warm_up(lambda n, t: index.search(ds.queries[:n], k=k, threads=t), threads)
    truth_s, (truth, _) = timed(lambda: index.search(ds.queries, k=k, threads=threads))
    rows = rows_of(ds.queries[:n_lat])
    lat = per_call_latency(lambda i: index.search(rows[i], k=k), len(rows))
    b1, _ = timed(lambda: index.search(ds.queries[:n_lat], k=k, threads=1))
    p = Point("exact", {}, {}, build_s, index.nbytes, 1.0, float(lat.mean()),
              float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
              b1 / len(rows) * 1e6, ds.queries.shape[0] / truth_s)
    return p, truth


def bench_scipy(ds: Dataset, k: int, n_lat: int):
    docs_t = ds.docs.T.tocsr()
    rows = rows_of(ds.queries[:n_lat])

    def one(i):
        s = (rows[i] @ docs_t).toarray()[0]
        top = np.argpartition(-s, min(k, s.size - 1))[:k]
        return top[np.lexsort((top, -s[top]))]

    lat = per_call_latency(one, len(rows), warmup=2)
    return Point("scipy", {}, {}, 0.0, int(docs_t.data.nbytes + docs_t.indices.nbytes
                                          + docs_t.indptr.nbytes), 1.0, float(lat.mean()),
                 float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                 float(lat.mean()), 1e6 / float(lat.mean()))


def bench_blocked(ds: Dataset, truth, build: dict, searches: list[dict], k: int, n_lat: int,
                  threads: int) -> list[Point]:
    from pipeline.index import BlockedIndex

    build_s, index = timed(lambda: BlockedIndex.build(ds.docs, **build))
    rows = rows_of(ds.queries[:n_lat])
    sub = ds.queries[:n_lat]
    points = []
    for s in searches:
        warm_up(lambda n, t: index.search(ds.queries[:n], k=k, threads=t, **s), threads)
        all_s, (got, _) = timed(lambda: index.search(ds.queries, k=k, threads=threads, **s))
        lat = per_call_latency(lambda i: index.search(rows[i], k=k, **s), len(rows))
        b1, _ = timed(lambda: index.search(sub, k=k, threads=1, **s))
        points.append(Point("blocked", build, s, build_s, index.nbytes, recall_at_k(got, truth),
                            float(lat.mean()), float(np.percentile(lat, 50)),
                            float(np.percentile(lat, 99)), b1 / len(rows) * 1e6,
                            ds.queries.shape[0] / all_s, {"stats": index.stats()}))
    return points


def set_seismic_threads(threads: int) -> None:
    """Give pyseismic-lsr ``threads`` threads for the whole process. Its ``num_threads``
    arguments do nothing (0.5.4: `build_from_dataset` and `batch_search` build a rayon pool
    and drop it without installing it), so every build and batch search runs on rayon's
    global pool, sized once per process from RAYON_NUM_THREADS, by default one thread per
    CPU: measured here, a "num_threads=1" batch search used 1.87 CPU-seconds per second on
    2 CPUs. Call before the first Seismic call; a one-thread batch time of Seismic is only
    measured when this is 1."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)


SEISMIC_BATCH1_NOTE = ("Seismic's one-thread batch time needs --threads 1 (its thread count "
                       "is fixed per process)")


def seismic_batch1_us(batch, n: int, rounds: int = 1) -> float:
    """Seismic's batch search of ``n`` queries on one thread, µs a query (best of
    ``rounds``); NaN where its process-wide pool has more than one thread."""
    if os.environ.get("RAYON_NUM_THREADS") != "1":
        return float("nan")
    return min(timed(lambda: batch(n))[0] for _ in range(rounds)) / n * 1e6


def bench_seismic(ds: Dataset, truth, build: dict, searches: list[dict], k: int, n_lat: int,
                  threads: int) -> list[Point]:
    import seismic

    d = ds.docs
    dataset = seismic.SeismicDataset(dim=d.shape[1])
    dataset.add_documents_by_id([str(i) for i in range(d.shape[0])],
                                d.indices.astype(np.int64), d.data.astype(np.float32),
                                d.indptr.astype(np.int64))

    def build_index():
        with captured_stdout():
            return seismic.SeismicIndex.build_from_dataset(
                dataset, n_postings=build["n_postings"],
                centroid_fraction=build.get("centroid_fraction", 0.1),
                min_cluster_size=build.get("min_cluster_size", 2),
                summary_energy=build.get("summary_energy", 0.4),
                max_fraction=build.get("max_fraction", 1.5),
                doc_cut=build.get("doc_cut", 15), num_threads=threads)

    build_s, index = timed(build_index)
    with captured_stdout() as out:
        index.print_space_usage_byte()
    match = re.search(r"Total:\s*(\d+)\s*Bytes", out["text"])
    memory = int(match.group(1)) if match else -1
    st = seismic.get_seismic_string()
    q = ds.queries
    comps = [np.array([str(t) for t in q.indices[q.indptr[i]:q.indptr[i + 1]]], dtype=st)
             for i in range(q.shape[0])]
    vals = [q.data[q.indptr[i]:q.indptr[i + 1]].astype(np.float32) for i in range(q.shape[0])]
    ids = np.array([str(i) for i in range(q.shape[0])], dtype=st)
    n_lat = min(n_lat, q.shape[0])

    def batch(s, n, nthreads):
        res = index.batch_search(ids[:n], comps[:n], vals[:n], k, s["query_cut"],
                                 s["heap_factor"], num_threads=nthreads)
        out = np.full((n, k), -1, np.int64)
        for r in res:   # results come back grouped by query id, not in input order
            if r:
                qi = int(r[0][0])
                out[qi, :len(r)] = [int(x[2]) for x in r]
        return out

    points = []
    for s in searches:
        warm_up(lambda n, t: batch(s, n, t), threads)
        all_s, got = timed(lambda: batch(s, q.shape[0], threads))
        lat = per_call_latency(lambda i: index.search(ids[i], comps[i], vals[i], k,
                                                      s["query_cut"], s["heap_factor"]), n_lat)
        b1_us = seismic_batch1_us(lambda n: batch(s, n, 1), n_lat)
        points.append(Point("seismic", build, s, build_s, memory, recall_at_k(got, truth),
                            float(lat.mean()), float(np.percentile(lat, 50)),
                            float(np.percentile(lat, 99)), b1_us,
                            q.shape[0] / all_s))
    return points


def seismic_index(ds: Dataset, build: dict, threads: int):
    """Build a pyseismic-lsr index over ``ds.docs``; returns (index, build seconds, bytes)."""
    import seismic

    d = ds.docs
    dataset = seismic.SeismicDataset(dim=d.shape[1])
    dataset.add_documents_by_id([str(i) for i in range(d.shape[0])],
                                d.indices.astype(np.int64), d.data.astype(np.float32),
                                d.indptr.astype(np.int64))
    t = time.perf_counter()
    with captured_stdout():
        index = seismic.SeismicIndex.build_from_dataset(
            dataset, n_postings=build["n_postings"],
            centroid_fraction=build.get("centroid_fraction", 0.1),
            min_cluster_size=build.get("min_cluster_size", 2),
            summary_energy=build.get("summary_energy", 0.4),
            max_fraction=build.get("max_fraction", 1.5),
            doc_cut=build.get("doc_cut", 15), num_threads=threads)
    build_s = time.perf_counter() - t
    with captured_stdout() as out:
        index.print_space_usage_byte()
    match = re.search(r"Total:\s*(\d+)\s*Bytes", out["text"])
    return index, build_s, int(match.group(1)) if match else -1


class SeismicQueries:
    """The queries of a dataset in pyseismic-lsr's input form, and its two search calls."""

    def __init__(self, index, q: sp.csr_matrix, k: int) -> None:
        import seismic

        st = seismic.get_seismic_string()
        self.index, self.k = index, k
        self.comps = [np.array([str(t) for t in q.indices[q.indptr[i]:q.indptr[i + 1]]],
                               dtype=st) for i in range(q.shape[0])]
        self.vals = [q.data[q.indptr[i]:q.indptr[i + 1]].astype(np.float32)
                     for i in range(q.shape[0])]
        self.ids = np.array([str(i) for i in range(q.shape[0])], dtype=st)

    def one(self, i: int, s: dict):
        return self.index.search(self.ids[i], self.comps[i], self.vals[i], self.k,
                                 s["query_cut"], s["heap_factor"])

    def batch(self, s: dict, n: int, threads: int) -> np.ndarray:
        res = self.index.batch_search(self.ids[:n], self.comps[:n], self.vals[:n], self.k,
                                      s["query_cut"], s["heap_factor"], num_threads=threads)
        out = np.full((n, self.k), -1, np.int64)
        for r in res:   # results come back grouped by query id, not in input order
            if r:
                out[int(r[0][0]), :len(r)] = [int(x[2]) for x in r]
        return out


def interleaved(calls: list, n: int, rounds: int) -> list[np.ndarray]:
    """Per-query microseconds of each call(i), the calls alternating query by query (so load
    changes on a shared machine hit all of them alike); per call and query, the best of
    ``rounds`` passes."""
    for c in calls:
        for i in range(min(5, n)):
            c(i)
    best = [np.full(n, np.inf) for _ in calls]
    for _ in range(rounds):
        for i in range(n):
            for c, b in zip(calls, best):
                t = time.perf_counter_ns()
                c(i)
                b[i] = min(b[i], (time.perf_counter_ns() - t) / 1e3)
    return best


def compare_defaults(ds: Dataset, truth: np.ndarray, fractions: list[float],
                     energies: list[float], searches: list[dict], k: int, n_lat: int,
                     threads: int, rounds: int) -> dict:
    """Our `BlockedIndex` with its derived defaults against Seismic's best point over a grid
    (``n_postings`` = fraction x mean list length, x ``energies``, x ``searches``), at each
    recall target: single-query latency re-measured interleaved, and one-thread batch time,
    same process, same vectors.

    Ours is measured two ways: with every parameter at its derived default, and with the
    derived build but the cheapest point of the same ``searches`` that reaches the target
    (the search parameters are per request; the issue's baseline was measured so)."""
    from pipeline.index import BlockedIndex

    nq = ds.queries.shape[0]
    n_lat = min(n_lat, nq)
    mean_list = ds.docs.nnz / ds.docs.shape[1]
    t = time.perf_counter()
    ours = BlockedIndex.build(ds.docs)
    ours_build = time.perf_counter() - t
    rows = rows_of(ds.queries)
    got, _ = ours.search(ds.queries, k=k, threads=threads)
    ours_recall = recall_at_k(got, truth)
    cfg = ours.config
    print(f"  ours (defaults): recall {ours_recall:.3f}  build {ours_build:.1f} s  "
          f"mem {ours.nbytes / 1e6:.1f} MB  n_postings={cfg.n_postings} "
          f"centroid_fraction={cfg.centroid_fraction:.3f} summary_energy={cfg.summary_energy} "
          f"query_cut={cfg.query_cut} heap_factor={cfg.heap_factor}", flush=True)
    # the derived search point is one of the candidates for "ours at its cheapest point"
    derived_search = {"query_cut": cfg.query_cut, "heap_factor": cfg.heap_factor}
    ours_grid = []
    for s in searches + ([derived_search] if derived_search not in searches else []):
        got, _ = ours.search(ds.queries, k=k, threads=threads, **s)
        rec = recall_at_k(got, truth)
        lat = per_call_latency(lambda i: ours.search(rows[i], k=k, **s), n_lat, warmup=3)
        ours_grid.append({"search": s, "recall": rec, "lat": float(lat.mean())})
        print(f"    ours (derived build) qc={s['query_cut']} hf={s['heap_factor']}: recall "
              f"{rec:.3f} {lat.mean():.0f} us", flush=True)
    grid = []
    for frac in fractions:
        for energy in energies:
            build = {"n_postings": max(1, round(frac * mean_list)), "centroid_fraction": 0.1,
                     "summary_energy": energy, "max_fraction": 1.5}
            index, build_s, memory = seismic_index(ds, build, threads)
            sq = SeismicQueries(index, ds.queries, k)
            for s in searches:
                rec = recall_at_k(sq.batch(s, nq, threads), truth)
                lat = per_call_latency(lambda i: sq.one(i, s), n_lat, warmup=3)
                grid.append({"build": build, "search": s, "recall": rec,
                             "lat": float(lat.mean()), "build_s": build_s, "memory": memory,
                             "index": index, "frac": frac})
                print(f"    seismic {frac}x n_postings={build['n_postings']} energy={energy} "
                      f"qc={s['query_cut']} hf={s['heap_factor']}: recall {rec:.3f} "
                      f"{lat.mean():.0f} us  build {build_s:.1f} s  {memory / 1e6:.1f} MB",
                      flush=True)
    out = {"dataset": ds.name, "ours": {"config": cfg.to_dict(), "recall": ours_recall,
                                        "build_s": ours_build, "memory": ours.nbytes},
           "targets": {}}
    for target in (0.95, 0.98):
        ok = [g for g in grid if g["recall"] >= target]
        if not ok:
            print(f"  recall>={target}: Seismic's grid never reaches it")
            continue
        g = min(ok, key=lambda g: g["lat"])
        sq = SeismicQueries(g["index"], ds.queries, k)
        s = g["search"]
        b_theirs_us = seismic_batch1_us(lambda n: sq.batch(s, n, 1), n_lat, rounds)

        def against_seismic(search: dict) -> tuple[float, float, float]:
            """(ours, Seismic) mean single-query µs, interleaved, and our batch1 µs. Each of
            our configurations gets its own pair: two of ours back to back would run the
            second on caches the first warmed (same lists, same documents)."""
            mine, theirs = interleaved([lambda i: ours.search(rows[i], k=k, **search),
                                        lambda i: sq.one(i, s)], n_lat, rounds)
            batch = min(timed(lambda: ours.search(ds.queries[:n_lat], k=k, threads=1,
                                                  **search))[0] for _ in range(rounds))
            return float(mine.mean()), float(theirs.mean()), batch / n_lat * 1e6

        ours_us, seismic_us, ours_b = against_seismic({})
        row = {"seismic_build": g["build"], "seismic_search": s, "seismic_recall": g["recall"],
               "seismic_build_s": g["build_s"], "seismic_memory": g["memory"],
               "ours_us": ours_us, "seismic_us": seismic_us, "ours_batch1_us": ours_b,
               "seismic_batch1_us": b_theirs_us}
        row["ratio"] = row["ours_us"] / row["seismic_us"]
        row["batch_ratio"] = row["ours_batch1_us"] / row["seismic_batch1_us"]
        reaching = [o for o in ours_grid if o["recall"] >= target]
        tuned = min(reaching, key=lambda o: o["lat"]) if reaching else None
        if tuned is not None:
            t_us, t_seismic_us, t_b = against_seismic(tuned["search"])
            row.update({"tuned_search": tuned["search"], "tuned_recall": tuned["recall"],
                        "tuned_us": t_us, "tuned_seismic_us": t_seismic_us,
                        "tuned_batch1_us": t_b, "tuned_ratio": t_us / t_seismic_us,
                        "tuned_batch_ratio": t_b / row["seismic_batch1_us"]})
        out["targets"][str(target)] = row
        flag = "" if ours_recall >= target else "  (ours below target!)"
        print(f"  recall>={target}: single ratio {row['ratio']:.2f} (ours {row['ours_us']:.0f} us"
              f" @ {ours_recall:.3f}, Seismic {row['seismic_us']:.0f} us @ {g['recall']:.3f}); "
              f"batch1 ratio {row['batch_ratio']:.2f} ({row['ours_batch1_us']:.0f} vs "
              f"{row['seismic_batch1_us']:.0f} us); mem {ours.nbytes / 1e6:.1f} vs "
              f"{g['memory'] / 1e6:.1f} MB; build {ours_build:.1f} vs {g['build_s']:.1f} s; "
              f"Seismic n_postings={g['build']['n_postings']} ({g['frac']}x mean list) "
              f"energy={g['build']['summary_energy']} query_cut={s['query_cut']} "
              f"heap_factor={s['heap_factor']}{flag}", flush=True)
        if tuned is not None:
            ts = tuned["search"]
            print(f"  recall>={target}, ours at its cheapest search point (derived build, "
                  f"query_cut={ts['query_cut']} heap_factor={ts['heap_factor']}, recall "
                  f"{tuned['recall']:.3f}): single ratio {row['tuned_ratio']:.2f} "
                  f"({row['tuned_us']:.0f} vs {row['tuned_seismic_us']:.0f} us); batch1 ratio "
                  f"{row['tuned_batch_ratio']:.2f} "
                  f"({row['tuned_batch1_us']:.0f} us)", flush=True)
        else:
            print(f"  recall>={target}: no search point reaches it on our derived build",
                  flush=True)
    out["ours_grid"] = ours_grid
    return out


def union(datasets: list[Dataset]) -> Dataset:
    """Every document and query of the given collections (one vocabulary) as one collection."""
    return Dataset("union", sp.vstack([d.docs for d in datasets]).tocsr(),
                   sp.vstack([d.queries for d in datasets]).tocsr(),
                   "+".join(d.name for d in datasets), datasets[0].builds)


def real_collections(names: str, cache: str, data_dir: str = "", with_union: bool = False,
                     only: str = "") -> list[Dataset]:
    """The comma-separated real collections (`load_real`), plus their union when asked,
    kept to the comma-separated names of ``only`` when given."""
    datasets = [load_real(n, cache, data_dir) for n in names.split(",") if n]
    if with_union:
        datasets.append(union(datasets))
    if only:
        datasets = [d for d in datasets if d.name in only.split(",")]
    return datasets


# --------------------------------------------------------------------------------------------
# grids and reporting
# --------------------------------------------------------------------------------------------

def build_grid(spec: str) -> list[dict]:
    """Build configurations from "n_postings:summary_energy,..." (centroid_fraction 0.1,
    max_fraction 1.5, the Seismic defaults, throughout)."""
    out = []
    for item in spec.split(","):
        n_postings, energy = item.split(":")
        out.append({"n_postings": int(n_postings), "centroid_fraction": 0.1,
                    "summary_energy": float(energy), "max_fraction": 1.5})
    return out


def search_grid(grid: str, spec: str = "") -> list[dict]:
    """Search configurations: a named grid, or "query_cut:heap_factor,..." when `spec` is given."""
    if spec:
        return [{"query_cut": int(c), "heap_factor": float(h)}
                for c, h in (item.split(":") for item in spec.split(","))]
    cuts = {"tiny": (5, 10), "small": (4, 6, 10), "full": (3, 5, 8, 10, 15)}[grid]
    factors = {"tiny": (0.9,), "small": (0.8, 1.0, 1.2), "full": (0.7, 0.8, 0.9, 1.0, 1.2)}[grid]
    return [{"query_cut": c, "heap_factor": h} for c in cuts for h in factors]


def pareto(points: list[Point]) -> list[Point]:
    """Points not beaten by another of the same system in both recall and latency."""
    front = []
    for p in sorted(points, key=lambda p: (p.lat_mean_us, -p.recall)):
        if not front or p.recall > front[-1].recall:
            front.append(p)
    return front


def best_at(points: list[Point], target: float, key: str = "lat_mean_us") -> Point | None:
    """The cheapest point reaching ``target`` by ``key``; points where ``key`` was not
    measured (nan: Seismic's batch1 on more than one thread) do not count."""
    ok = [p for p in points if p.recall >= target and not np.isnan(getattr(p, key))]
    return min(ok, key=lambda p: getattr(p, key)) if ok else None


def fmt_point(p: Point) -> str:
    cfg = ",".join(f"{k}={v}" for k, v in {**p.build, **p.search}.items()
                   if k not in ("centroid_fraction", "max_fraction"))
    return (f"{p.system:8s} recall {p.recall:.3f}  mean {p.lat_mean_us:8.0f} us  "
            f"p99 {p.lat_p99_us:8.0f} us  batch1 {p.batch1_us:8.0f} us  "
            f"{p.qps_all_cores:8.0f} q/s  mem {p.memory_bytes / 1e6:8.1f} MB  "
            f"build {p.build_s:6.1f} s  {cfg}")


def report(ds: Dataset, points: list[Point], out_dir: str) -> dict:
    print(f"\n=== {ds.name}: {ds.docs.shape[0]} docs, {ds.queries.shape[0]} queries, "
          f"{ds.docs.nnz / max(1, ds.docs.shape[0]):.0f} terms/doc, "
          f"{ds.queries.nnz / max(1, ds.queries.shape[0]):.0f} terms/query ({ds.source})")
    for system in ("exact", "scipy"):
        for p in points:
            if p.system == system:
                print("  " + fmt_point(p))
    summary = {"dataset": ds.name, "ratios": {}}
    for system in ("blocked", "seismic"):
        print(f"  Pareto front, {system} (mean single-thread latency vs recall@10):")
        for p in pareto([p for p in points if p.system == system]):
            print("    " + fmt_point(p))
    ours = [p for p in points if p.system == "blocked"]
    theirs = [p for p in points if p.system == "seismic"]
    print("  ours/Seismic at equal recall (best point of each reaching the target):")
    for target in RECALL_TARGETS:
        row = {}
        for key, label in (("lat_mean_us", "mean latency"), ("batch1_us", "batch 1-thread")):
            a, b = best_at(ours, target, key), best_at(theirs, target, key)
            if a and b:
                ratio = getattr(a, key) / getattr(b, key)
                row[key] = {"ratio": ratio, "ours": getattr(a, key), "seismic": getattr(b, key),
                            "ours_memory": a.memory_bytes, "seismic_memory": b.memory_bytes,
                            "ours_recall": a.recall, "seismic_recall": b.recall}
                print(f"    recall>={target:.2f} {label:15s}: ratio {ratio:5.2f}  "
                      f"(ours {getattr(a, key):7.0f} us, {a.memory_bytes / 1e6:.1f} MB; "
                      f"Seismic {getattr(b, key):7.0f} us, {b.memory_bytes / 1e6:.1f} MB)")
            else:
                print(f"    recall>={target:.2f} {label:15s}: not reached (or not measured) by "
                      f"{'ours' if not a else 'Seismic'}")
        summary["ratios"][str(target)] = row
    # memory: each system's smallest index reaching 0.95
    a = min((p for p in ours if p.recall >= 0.95), key=lambda p: p.memory_bytes, default=None)
    b = min((p for p in theirs if p.recall >= 0.95), key=lambda p: p.memory_bytes, default=None)
    if a and b:
        print(f"  smallest index reaching recall 0.95: ours {a.memory_bytes / 1e6:.1f} MB, "
              f"Seismic {b.memory_bytes / 1e6:.1f} MB (ratio {a.memory_bytes / b.memory_bytes:.2f})")
    plot(ds, points, out_dir)
    return summary


def plot(ds: Dataset, points: list[Point], out_dir: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    for system, color in (("blocked", "tab:blue"), ("seismic", "tab:orange")):
        pts = [p for p in points if p.system == system]
        if not pts:
            continue
        ax.scatter([p.lat_mean_us for p in pts], [p.recall for p in pts], s=12, color=color,
                   alpha=0.35)
        front = pareto(pts)
        ax.plot([p.lat_mean_us for p in front], [p.recall for p in front], "-o", ms=4,
                color=color, label="ours (BlockedIndex)" if system == "blocked" else "Seismic")
    for system, marker in (("exact", "s"), ("scipy", "^")):
        for p in points:
            if p.system == system:
                ax.scatter([p.lat_mean_us], [1.0], marker=marker, color="k", s=30,
                           label=f"{system} (recall 1)")
    ax.set_xscale("log")
    ax.set_xlabel("single-thread latency per query, mean (us, log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(f"{ds.name}: {ds.docs.shape[0]:,} docs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(os.path.join(out_dir, f"bench_index_{ds.name}.png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=1_000_000,
                        help="synthetic documents (0: none)")
    parser.add_argument("--synthetic-queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", default="scifact,vaswani,cisi",
                        help="comma-separated real collections ('' for none)")
    parser.add_argument("--cache", default="/work/cache")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                       "shared", "data"))
    parser.add_argument("--grid", default="small", choices=("tiny", "small", "full"),
                        help="search grid (query_cut x heap_factor)")
    parser.add_argument("--searches", default="",
                        help="explicit search grid, query_cut:heap_factor,... (overrides --grid)")
    parser.add_argument("--synthetic-builds", default="1500:0.4,3000:0.4,3000:0.25",
                        help="build grid for the synthetic collection, n_postings:energy,...")
    parser.add_argument("--real-builds", default="300:0.4,1000:0.4,1000:0.25",
                        help="build grid for the real collections")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for batched search and builds (default: all cores)")
    parser.add_argument("--skip-seismic", action="store_true")
    parser.add_argument("--union", action="store_true",
                        help="also benchmark the union of the real collections")
    parser.add_argument("--defaults", action="store_true",
                        help="instead of the build grid: our derived defaults against "
                             "Seismic's best over --seismic-fractions x --seismic-energies x "
                             "the search grid, interleaved (see compare_defaults)")
    parser.add_argument("--seismic-fractions", default="1,2,4,6,8",
                        help="Seismic n_postings as multiples of the mean list length")
    parser.add_argument("--seismic-energies", default="0.4")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved latency passes (best per query)")
    parser.add_argument("--only", default="",
                        help="benchmark only these collections (names as printed, e.g. union)")
    parser.add_argument("--out", default="bench-output")
    args = parser.parse_args()

    import numba

    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)          # our builds get the same threads as Seismic's
    set_seismic_threads(threads)
    info = describe_machine()
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine: {machine_line(info)}")
    print(f"date:    {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"load:    {os.getloadavg()[0]:.2f} (1-min load average at start)")
    print(f"threads for batches/builds: {threads} (Seismic: RAYON_NUM_THREADS={threads})")
    if threads != 1:
        print(f"note: {SEISMIC_BATCH1_NOTE}; its batch1 columns read nan")

    datasets: list[Dataset] = []
    if args.synthetic:
        from pipeline.testing import synthetic

        t = time.perf_counter()
        d, q = synthetic.generate(args.synthetic, args.synthetic_queries, args.seed)
        print(f"synthetic: generated {d.shape[0]} docs / {q.shape[0]} queries in "
              f"{time.perf_counter() - t:.1f} s")
        datasets.append(Dataset(f"synthetic-{args.synthetic // 1000}k", d, q,
                                f"pipeline.testing.synthetic.generate(seed={args.seed})",
                                args.synthetic_builds))
    for name in [n for n in args.real.split(",") if n]:
        ds = load_real(name, args.cache, os.path.normpath(args.data))
        ds.builds = args.real_builds
        datasets.append(ds)
    if args.union:
        datasets.append(union([d for d in datasets if not d.name.startswith("synthetic")]))
    if args.only:
        datasets = [d for d in datasets if d.name in args.only.split(",")]

    results = {"command": sys.argv, "machine": info, "date": dt.datetime.now().isoformat(),
               "datasets": []}
    for ds in datasets:
        print(f"\n--- {ds.name} ---", flush=True)
        exact_point, truth = bench_exact(ds, args.k, args.latency_queries, threads)
        if args.defaults:
            print(f"  {ds.docs.shape[0]} docs, {ds.queries.shape[0]} queries, mean list "
                  f"{ds.docs.nnz / ds.docs.shape[1]:.1f}; exact {exact_point.lat_mean_us:.0f} "
                  f"us/query", flush=True)
            summary = compare_defaults(
                ds, truth, [float(x) for x in args.seismic_fractions.split(",")],
                [float(x) for x in args.seismic_energies.split(",")],
                search_grid(args.grid, args.searches), args.k, args.latency_queries, threads,
                args.rounds)
            summary["exact_us"] = exact_point.lat_mean_us
            results["datasets"].append(summary)
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench_index.json"), "w") as f:
                json.dump(results, f, indent=1, default=str)
            continue
        points = [exact_point, bench_scipy(ds, args.k, min(args.latency_queries, 100))]
        searches = search_grid(args.grid, args.searches)
        for build in build_grid(ds.builds):
            print(f"  build {build}", flush=True)
            points += bench_blocked(ds, truth, build, searches, args.k, args.latency_queries,
                                    threads)
            if not args.skip_seismic:
                points += bench_seismic(ds, truth, build, searches, args.k,
                                        args.latency_queries, threads)
        summary = report(ds, points, args.out)
        summary["points"] = [p.__dict__ for p in points]
        results["datasets"].append(summary)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_index.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(f"\nresults: {os.path.join(args.out, 'bench_index.json')}; plots: "
          f"{os.path.join(args.out, 'bench_index_<dataset>.png')}")


if __name__ == "__main__":
    main()
