"""`lsr info`: a committed generation's shards and how their index parameters were derived.

Real `lsr` processes over generations written by the direct writer (synthetic SPLADE-like
vectors). The shard statistics each derivation must quote are computed here from the stored
postings with numpy, never through the index code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ray_procs import subprocess_env

from pipeline.catalog import IndexLayout, read_manifest
from pipeline.format import read_postings
from pipeline.testing.direct_writer import write_generation
from pipeline.testing.synthetic import generate

LSR = [sys.executable, "-m", "pipeline.cli"]
SETTINGS = {"model": "splade-tiny", "max_length": 256, "query_max_length": 64}


def _info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LSR, "info", *args], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Generation 1 at the derived defaults (3 blocked shards); generation 2 with an explicit
    n_postings; generation 3 an exact index."""
    docs, _ = generate(2400, 1, seed=5)
    ids = [f"d{i}" for i in range(docs.shape[0])]
    url = str(tmp_path_factory.mktemp("info") / "index")
    write_generation(url, 1, ids, docs, 3, SETTINGS)
    write_generation(url, 2, ids, docs, 2, SETTINGS, index_params={"n_postings": 40},
                     parent_generation=1)
    write_generation(url, 3, ids, docs, 1, SETTINGS, index_kind="exact", parent_generation=2)
    return url


def _shard_stats(url: str, generation: int) -> dict[str, dict[str, float]]:
    layout = IndexLayout.at(url)
    out = {}
    for entry in read_manifest(layout, generation).shards:
        csr = read_postings(layout.postings(entry.name)).vectors
        used = np.unique(csr.indices).size
        out[entry.name] = {"nnz": csr.nnz, "used": used, "used_list": csr.nnz / used,
                           "doc_terms": csr.nnz / csr.shape[0], "n_docs": csr.shape[0]}
    return out


def test_info_shows_each_derived_parameter_with_the_shard_statistics_it_came_from(root):
    out = _info(root, "--generation", "1", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert (info["generation"], info["current"], info["generations"]) == (1, 3, [1, 2, 3])
    stats = _shard_stats(root, 1)
    assert [s["name"] for s in info["shards"]] == list(stats)
    for shard in info["shards"]:
        want = stats[shard["name"]]
        assert (shard["kind"], shard["n_docs"], shard["nnz"], shard["used_terms"]) == \
               ("blocked", want["n_docs"], want["nnz"], want["used"])
        config, why = shard["config"], shard["derivation"]
        # every parameter left to the defaults is derived, and each one explained
        assert set(why) == set(config["derived"]) == {
            "n_postings", "centroid_fraction", "summary_energy", "query_cut", "heap_factor"}
        # the explanation quotes this shard's own statistics ...
        assert f"mean used list {want['used_list']:.1f}" in why["n_postings"]
        assert f"{want['nnz']:,} postings / {want['used']:,} terms in use" in why["n_postings"]
        assert f"sqrt({want['doc_terms']:.1f} terms a document)" in why["query_cut"]
        # ... and the rule it states gives the value the shard was built with (BENCHMARKS §7:
        # 2.5 x the mean used list below a mean list of 150, as here)
        assert want["used_list"] < 150
        assert config["n_postings"] == round(2.5 * want["used_list"])
        assert f"n_postings {config['n_postings']}" in why["centroid_fraction"]


def test_info_names_what_was_given_and_explains_only_what_was_derived(root):
    info = json.loads(_info(root, "--json").stdout)            # the live generation: exact
    assert info["generation"] == 3 and info["shards"][0]["kind"] == "exact"
    assert "config" not in info["shards"][0]
    info = json.loads(_info(root, "--generation", "2", "--json").stdout)
    for shard in info["shards"]:
        assert shard["config"]["n_postings"] == 40
        assert "n_postings" not in shard["derivation"]
        assert "n_postings" not in shard["config"]["derived"]
        assert "n_postings 40" in shard["derivation"]["query_cut"]   # derived from the given one
    text = _info(root, "--generation", "2")
    assert text.returncode == 0, text.stderr[-2000:]
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"index {root}: generation 2 (current 3; kept 1, 2, 3)")
    assert sum(line.strip() == "n_postings = 40" for line in lines) == 2
    assert sum(line.strip().startswith("query_cut = ") and "(derived: " in line
               for line in lines) == 2


def test_info_on_an_index_saved_before_the_statistics_were_recorded(root, tmp_path):
    import shutil

    import zarr

    old = tmp_path / "old"
    shutil.copytree(root, old)
    layout = IndexLayout.at(str(old))
    for entry in read_manifest(layout, 1).shards:
        group = zarr.open_group(layout.index(entry.name).path, mode="r+", zarr_format=3)
        attrs = dict(group.attrs)
        del attrs["used_terms"]
        group.attrs.put(attrs)
    out = _info(str(old), "--generation", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    notes = [line for line in out.stdout.splitlines() if "were not recorded" in line]
    assert len(notes) == 3 and "(derived: " not in out.stdout


def test_info_on_a_missing_index_fails_in_one_line(tmp_path):
    out = _info(str(tmp_path / "nothing"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
