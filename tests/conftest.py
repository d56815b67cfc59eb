"""Shared fixtures: real data, the real model, a real S3 API (moto server), a real local Ray.

Everything here starts real services on 127.0.0.1 and stops exactly what it started.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_root() -> Path | None:
    """The shared BEIR collections: $LSR_DATA_DIR, else ../shared/data beside the checkout."""
    candidates = [os.environ.get("LSR_DATA_DIR"), REPO.parent / "shared" / "data",
                  REPO.parent.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "scifact" / "corpus.jsonl").exists():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if root is None:
        pytest.skip("real test collections not found (set LSR_DATA_DIR or place ../shared/data)")
    return root


@pytest.fixture(scope="session")
def scifact_dir(data_dir: Path) -> Path:
    return data_dir / "scifact"


SCIFACT_HEAD_DOCS = 1500
"""Documents in `scifact_head_dir`: scifact's first 1,500 (of 5,183), enough for three shards
and every filter the tests draw. Through the job that took 43 s of the default suite on 2
cores, against 235 s for the whole collection. The whole collection runs in the slow tests."""


@pytest.fixture(scope="session")
def scifact_head_dir(scifact_dir: Path, tmp_path_factory) -> Path:
    """A BEIR folder of scifact's first `SCIFACT_HEAD_DOCS` documents in corpus order, all its
    queries, and the qrels of those documents (written under the session's tmp, never the repo)."""
    import json

    out = tmp_path_factory.mktemp("scifact-head")
    ids = set()
    with open(scifact_dir / "corpus.jsonl", encoding="utf-8") as src, \
            open(out / "corpus.jsonl", "w", encoding="utf-8") as dst:
        for line, _ in zip(src, range(SCIFACT_HEAD_DOCS)):
            ids.add(str(json.loads(line)["_id"]))
            dst.write(line)
    (out / "queries.jsonl").write_bytes((scifact_dir / "queries.jsonl").read_bytes())
    (out / "qrels").mkdir()
    for qrels in (scifact_dir / "qrels").glob("*.tsv"):
        lines = qrels.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [ln for ln in lines[1:] if ln.split("\t")[1] in ids]
        (out / "qrels" / qrels.name).write_text("".join(lines[:1] + kept), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with one bucket; yields storage options and env for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    bucket = "lsr-test"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    yield {"endpoint": endpoint, "bucket": bucket, "storage_options": options, "env": env}
    server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole session, sized for a 2-core machine."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster another test or process left behind.
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
                 log_to_driver=False, configure_logging=False)
    yield ray
    try:
        from ray import serve
        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve may never have started
        pass
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Real encodings, computed once per session and shared by every test that needs them.
# Set LSR_TEST_CACHE=/some/dir to keep them on disk between local runs (never in CI).
# ---------------------------------------------------------------------------------------------

class Encoded:
    """A collection encoded with splade-tiny: documents and all queries, in file order."""

    def __init__(self, doc_ids, docs, query_ids, queries):
        self.doc_ids = doc_ids      # list[str], corpus order
        self.docs = docs            # scipy.sparse.csr_matrix float32 (n_docs, vocab)
        self.query_ids = query_ids  # list[str], queries.jsonl order
        self.queries = queries      # csr_matrix float32 (n_queries, vocab)


def _read_collection(folder: Path):
    import json

    from pipeline.data.records import parse_record

    docs = [parse_record(json.loads(line)) for line in open(folder / "corpus.jsonl", encoding="utf-8")]
    queries = []
    for line in open(folder / "queries.jsonl", encoding="utf-8"):
        q = json.loads(line)
        queries.append((str(q["_id"]), q["text"]))
    return docs, queries


_ENCODER = None


def tiny_encoder():
    """One in-process splade-tiny SpladeEncoder (reference settings) per test session."""
    global _ENCODER
    if _ENCODER is None:
        from pipeline.encode import SpladeEncoder

        _ENCODER = SpladeEncoder("splade-tiny", device="cpu", max_length=256, query_max_length=64)
    return _ENCODER


def _encode_collection(folder: Path) -> Encoded:
    # SpladeEncoder equals the plain naver/splade expression (tests/test_encoder.py checks it on
    # real text); the plain expression itself is too slow to run over whole collections here.
    docs, queries = _read_collection(folder)
    encoder = tiny_encoder()
    doc_matrix = encoder.encode([t for _, t in docs])
    query_matrix = encoder.encode_queries([t for _, t in queries])
    return Encoded([i for i, _ in docs], doc_matrix, [i for i, _ in queries], query_matrix)


def _save_encoded(path: Path, e: Encoded) -> None:
    import numpy as np

    arrays = {"doc_ids": np.asarray(e.doc_ids, dtype=str), "query_ids": np.asarray(e.query_ids, dtype=str)}
    for name, m in (("docs", e.docs), ("queries", e.queries)):
        arrays.update({f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr,
                       f"{name}_shape": np.asarray(m.shape)})
    np.savez(path, **arrays)


def _load_encoded(path: Path) -> Encoded:
    import numpy as np
    import scipy.sparse as sp

    z = np.load(path, allow_pickle=False)
    mats = {name: sp.csr_matrix((z[f"{name}_data"], z[f"{name}_indices"], z[f"{name}_indptr"]),
                                shape=tuple(z[f"{name}_shape"])) for name in ("docs", "queries")}
    return Encoded(z["doc_ids"].tolist(), mats["docs"], z["query_ids"].tolist(), mats["queries"])


@pytest.fixture(scope="session")
def encodings(data_dir: Path):
    """Factory: encodings("cisi") -> Encoded, computed at most once per session. A collection
    outside the shared data is named and given by its folder: encodings("scifact-head", path)."""
    cache: dict[str, Encoded] = {}
    disk = os.environ.get("LSR_TEST_CACHE")

    def get(name: str, folder: Path | None = None) -> Encoded:
        if name not in cache:
            path = Path(disk) / f"encodings-{name}.npz" if disk else None
            if path is not None and path.exists():
                cache[name] = _load_encoded(path)
            else:
                cache[name] = _encode_collection(folder or data_dir / name)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _save_encoded(path, cache[name])
        return cache[name]

    return get


# ---------------------------------------------------------------------------------------------
# One scifact index built by the real indexing job, shared by job, serve and evaluation tests.
# ---------------------------------------------------------------------------------------------

SCIFACT_SHARD_SIZE = 500   # 1,500 documents (`scifact_head_dir`) -> 3 shards


@pytest.fixture(scope="session")
def scifact_head(encodings, scifact_head_dir: Path):
    """Reference encodings (`Encoded`) of `scifact_head_dir`."""
    return encodings("scifact-head", scifact_head_dir)


@pytest.fixture(scope="session")
def scifact_index(ray_local, scifact_head_dir: Path, tmp_path_factory):
    """(index root path, JobSummary) of scifact's head (`scifact_head_dir`) indexed by
    `run_index_job` on the local Ray."""
    from pipeline.batch import IndexJobConfig, run_index_job

    root = tmp_path_factory.mktemp("scifact-index") / "index"
    summary = run_index_job(IndexJobConfig(corpus=str(scifact_head_dir), output=str(root),
                                           shard_size=SCIFACT_SHARD_SIZE))
    return root, summary


def assert_same_ranking(ids_a, scores_a, ids_b, scores_b, tol: float = 1e-4) -> None:
    """Two top-k lists agree: scores rank by rank within `tol`, and the ids too, except that
    documents whose scores are within `tol` of each other may trade places."""
    import numpy as np

    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    assert len(ids_a) == len(ids_b), (ids_a, ids_b)
    assert np.allclose(scores_a, scores_b, atol=tol, rtol=0), (scores_a, scores_b)
    for rank, (a, b) in enumerate(zip(ids_a, ids_b)):
        if a != b:
            near = np.abs(scores_a - scores_a[rank]) <= 2 * tol
            assert b in {ids_a[j] for j in np.flatnonzero(near)} or \
                abs(scores_a[rank] - scores_a[-1]) <= 2 * tol, (rank, ids_a, ids_b, scores_a)
