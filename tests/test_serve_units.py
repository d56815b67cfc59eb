"""Endpoint pieces that need no Ray cluster: leases, configuration, request models, wire
format, shard grouping, and the cluster Serve config."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from pipeline.serve.api import SearchRequest
from pipeline.serve.config import ServeConfig
from pipeline.serve.controller import group_shards
from pipeline.catalog.leases import (
    lease_location,
    leased_generations,
    read_leases,
    release_lease,
    write_lease,
)
from pipeline.serve.protocol import QueryBatch, encoder_key
from pipeline.catalog import IndexLayout

REPO = Path(__file__).resolve().parents[1]


# -- leases ------------------------------------------------------------------------------------
def test_lease_round_trip_and_expiry(tmp_path):
    layout = IndexLayout.at(str(tmp_path))
    lease = write_lease(layout, "server-a", 5, ttl_s=30, also=[4, 5])
    assert lease.generations == (5, 4)
    on_disk = json.loads(Path(lease_location(layout, "server-a").path).read_text())
    assert on_disk["generation"] == 5 and on_disk["expires_at"] == pytest.approx(time.time() + 30, abs=5)
    write_lease(layout, "server-b", 7, ttl_s=0.01)
    time.sleep(0.05)
    assert [x.server_id for x in read_leases(layout)] == ["server-a", "server-b"]
    assert leased_generations(layout) == {4, 5}                  # b's lease has expired
    assert leased_generations(layout, now=time.time() + 60) == set()
    release_lease(layout, "server-a")
    release_lease(layout, "server-a")                            # missing is fine
    assert leased_generations(layout) == set()


def test_lease_written_by_hand_in_minimal_form_is_honoured(tmp_path):
    layout = IndexLayout.at(str(tmp_path))
    folder = tmp_path / "leases"
    folder.mkdir()
    (folder / "other.json").write_text(json.dumps({"generation": 3, "expires_at": time.time() + 60}))
    assert leased_generations(layout) == {3}
    assert read_leases(layout)[0].server_id == "other"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"generation": "3", "expires_at": 1}),
                                     json.dumps({"generation": 3})])
def test_bad_lease_file_raises_rather_than_guessing(tmp_path, content):
    (tmp_path / "leases").mkdir()
    (tmp_path / "leases" / "x.json").write_text(content)
    with pytest.raises(ValueError, match="x.json"):
        leased_generations(IndexLayout.at(str(tmp_path)))


@pytest.mark.parametrize("server_id", ["", "a/b", "../x", "x" * 129])
def test_lease_server_id_is_checked(tmp_path, server_id):
    with pytest.raises(ValueError, match="server id"):
        write_lease(IndexLayout.at(str(tmp_path)), server_id, 1, ttl_s=10)


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"replicas_per_shard": 0}, "replicas_per_shard"),
    ({"shards_per_replica": -1}, "shards_per_replica"),
    ({"encoder_placement": "gpu"}, "encoder_placement"),
    ({"on_shard_failure": "ignore"}, "on_shard_failure"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"max_k": 5000}, "max_k"),
    ({"searcher_cpus": -1}, "searcher_cpus"),
    ({"route_prefix": "api"}, "route_prefix"),
    ({"server_id": "a b"}, "server id"),
    ({"direct_host": ""}, "direct_host must be"),
    ({"direct_port": 0, "topology": "embedded"}, "direct_port must be"),
    ({"direct_port": 65535, "topology": "embedded", "ingress_replicas": 2}, "direct_port must be"),
    ({"direct_port": True, "topology": "embedded"}, "direct_port must be"),
    ({"access_log": "no"}, "access_log must be true or false"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(index="/tmp/x", **overrides)


def test_direct_ports_one_per_ingress_replica():
    config = ServeConfig(index="/tmp/x", direct_port=31000, ingress_replicas=2,
                         route_prefix="/api/", direct_host="0.0.0.0")
    assert config.direct_ports() == range(31000, 31002)
    assert config.direct_urls() == ["http://0.0.0.0:31000/api/search",
                                     "http://0.0.0.0:31001/api/search"]
    assert ServeConfig(index="/tmp/x").direct_urls() == []


def test_config_from_args_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown serve settings \\['replicas'\\]"):
        ServeConfig.from_args({"index": "/tmp/x", "replicas": 2})
    config = ServeConfig.from_args({"index": "/tmp/x", "replicas_per_shard": 2})
    assert ServeConfig(**config.to_args()) == config


def test_cluster_serve_config_is_valid_and_builds():
    from ray.serve.schema import ServeDeploySchema

    from pipeline.serve.app import build_app

    raw = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    (app,) = schema.applications
    assert app.import_path == "pipeline.serve.app:build_app"
    config = ServeConfig.from_args(app.args)
    assert config.replicas_per_shard >= 2 and config.api_key_env and config.app_name == app.name
    assert build_app(app.args) is not None    # binds the graph; deploys nothing


# -- request model -----------------------------------------------------------------------------
def test_search_request_accepts_one_or_many_queries():
    assert SearchRequest.model_validate({"query": "a"}).texts() == ["a"]
    req = SearchRequest.model_validate({"queries": ["a", "b"], "k": 1000, "exact": True})
    assert req.texts() == ["a", "b"] and req.k == 1000
    for bad in ({"query": "a", "k": 1001}, {"query": "a", "extra": 1}, {"queries": ["a", ""]},
                {"query": None, "queries": None}):
        with pytest.raises(ValueError):
            SearchRequest.model_validate(bad)


# -- wire format and grouping -------------------------------------------------------------------
def test_query_batch_round_trip_rows_and_writable_arrays():
    rng = np.random.default_rng(0)
    csr = sp.random(5, 300, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    batch = QueryBatch.from_csr(csr)
    assert (batch.to_csr() != csr).nnz == 0
    assert (batch.rows(1, 4).to_csr() != csr[1:4]).nnz == 0
    for array in (batch.indptr, batch.indices, batch.values):
        array.flags.writeable = False              # as Ray hands them over
    out = batch.to_csr()
    assert out.data.flags.writeable and out.indices.flags.writeable and out.indptr.flags.writeable


def test_group_shards_and_encoder_key():
    names = [f"s{i}" for i in range(5)]
    assert group_shards(names, 1) == [[n] for n in names]
    assert group_shards(names, 2) == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert group_shards(names, 0) == [names]
    assert encoder_key({"a": 1, "b": 2}) == encoder_key({"b": 2, "a": 1}) != encoder_key({"a": 2})


# -- strict request model, merge, topology ------------------------------------------------------
@pytest.mark.parametrize("raw", [b'{"query": "a", "exact": "yes"}', b'{"query": "a", "exact": 1}',
                                 b'{"query": "a", "k": 10.0}', b'{"query": "a", "k": "10"}',
                                 b'{"query": "a", "heap_factor": NaN}',
                                 b'{"query": "a", "heap_factor": 1e400}',
                                 b'{"query": "a", "allow_partial": "true"}'])
def test_search_request_is_strict(raw):
    with pytest.raises(ValueError):
        SearchRequest.model_validate_json(raw)
    assert SearchRequest.model_validate_json(b'{"query": "a", "heap_factor": 1}').heap_factor == 1.0


def test_merge_rows_keeps_corpus_order_on_ties_and_pads():
    from pipeline.search import merge_rows

    a = (np.array([[5, 1, -1]]), np.array([[2.0, 1.0, 0.0]], np.float32))
    b = (np.array([[0, 9, 7]]), np.array([[2.0, 1.0, 0.5]], np.float32))
    rows, scores = merge_rows([a, b], 4)
    assert rows.tolist() == [[0, 5, 1, 9]] and scores.tolist() == [[2.0, 2.0, 1.0, 1.0]]
    rows, scores = merge_rows([(np.array([[3, -1]]), np.array([[1.0, 0.0]], np.float32))], 3)
    assert rows.tolist() == [[3, -1, -1]]


def test_config_topology_and_embedded_fit():
    with pytest.raises(ValueError, match="topology"):
        ServeConfig(index="/tmp/x", topology="both")
    config = ServeConfig(index="/tmp/x", ingress_replicas=2)
    assert config.topology == "auto"
    assert config.embedded_fits(1 << 30, 8 << 30) and not config.embedded_fits(1 << 30, 7 << 30)


def test_timing_headers_round_trip():
    from pipeline.serve.timing import clock, parse_clock, parse_server_timing, server_timing

    value = server_timing({"route": 0.0002, "encode": 0.0031, "ingress": 0.0045})
    assert value == "route;dur=0.200, encode;dur=3.100, ingress;dur=4.500"
    assert parse_server_timing(value + ", cache;desc=hit") == {"route": 0.2, "encode": 3.1,
                                                               "ingress": 4.5}
    assert parse_server_timing("") == {}
    assert parse_clock(clock(12.5, 12.503)) == (12.5, 12.503)
    assert parse_clock("") is None and parse_clock("arrived=1.0") is None


@pytest.mark.parametrize("access_log", [False, True])
def test_access_log_setting_reaches_the_endpoints_deployments(access_log):
    """The setting is the endpoint's: the ingress and the controller built here carry it (the
    controller passes the same `logging_config()` to the searchers and encoder it starts)."""
    from pipeline.serve.app import build_endpoint

    app = build_endpoint(ServeConfig(index="/tmp/x", access_log=access_log))
    ingress = app._bound_deployment                       # noqa: SLF001 - Serve's own handle
    controller = ingress.init_args[1]._bound_deployment   # noqa: SLF001
    for deployment in (ingress, controller):
        assert deployment.logging_config["enable_access_log"] is access_log
    assert ServeConfig(index="/tmp/x").access_log is False
