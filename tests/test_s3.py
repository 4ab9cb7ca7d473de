"""The warehouse on S3-compatible storage: moto's S3 server on 127.0.0.1 is the object store (no mocks of DuckDB or
Parquet); s3fs reaches it through the standard AWS_* variables."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import yaml
from moto.server import ThreadedMotoServer

from cli.main import main as hicra
from hicra.cache import default_cache_dir
from schemas.config import STAGES
from schemas.tables import RolloutRow, ScoreRow, to_table
from tests.conftest import free_port, small_config
from tests.test_warehouse import rollout, score
from warehouse.catalog import connect, query
from warehouse.store import Warehouse

BUCKET = "hicra-test"


@pytest.fixture(scope="module")
def s3():
    """An S3 server on a free port of 127.0.0.1 with one bucket; yields a maker of fresh `s3://` roots in it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield lambda name: f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:6]}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_commit_protocol_check_and_gc_on_s3(s3):
    store = Warehouse(s3("unit"))
    assert store.url.startswith(f"s3://{BUCKET}/unit-") and not store.local and not store.exists()
    store.commit_stage("r", 0, "rollout", {"rollouts": to_table(RolloutRow, [rollout("r", 0, 0, s) for s in (0, 1)])})
    assert store.exists() and store.commits()[0].files[0]["path"].startswith("rollouts/run_id=r/iteration=0/rollout-")
    # a killed verify attempt: a staged object and one moved into its partition, but no commit record
    staging = store.staging_dir("r", 0, "verify")
    store.fs.pipe_file(f"{staging}/scores.parquet", b"partial")
    leftover = f"{store.partition('scores', 'r', 0)}/verify-deadbeef.parquet"
    with store.fs.open(leftover, "wb") as fh:
        pq.write_table(to_table(ScoreRow, [score("r", 0, 0, 0, 1.0)]), fh)
    assert query(store.url, "SELECT count(*) AS n FROM scores").to_pylist() == [{"n": 0}]
    assert [(p.kind, p.path) for p in store.check_files()] == [("extra", store.relative(leftover))]
    assert sorted(store.gc(min_age=0, dry_run=True).removed) == sorted([staging, leftover])
    assert sorted(store.discard_uncommitted("r", 0, "verify")) == sorted([staging, leftover])
    assert store.check_files() == [] and store.gc(min_age=0).removed == []

    scores = [score("r", 0, 0, s, float(s == 0)) for s in (0, 1)]
    store.commit_stage("r", 0, "verify", {"scores": to_table(ScoreRow, scores)})
    assert store.read_table("scores", "r", 0).num_rows == 2
    with connect(store.url, read_only=True) as con:
        assert con.sql("SELECT accuracy FROM iteration_summary").fetchall() == [(0.5,)]
    with connect(store.url) as con:  # S3 was read with no extension installed or loaded: through s3fs
        assert con.sql("SELECT count(*) FROM scores").fetchall() == [(2,)]
        autoload = (
            "SELECT current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions')"
        )
        assert con.sql(autoload).fetchall() == [(False, False)]
        httpfs = "SELECT * FROM duckdb_extensions() WHERE extension_name = 'httpfs' AND loaded"
        assert con.sql(httpfs).fetchall() == []

    # an altered committed object: the sha256 in its commit record tells
    path = store.path(store.read_commit("r", 0, "verify").files[0]["path"])
    data = bytearray(store.fs.cat_file(path))
    data[10] ^= 0xFF
    store.fs.pipe_file(path, bytes(data))
    assert [p.kind for p in store.check_files()] == ["altered"]

    store.freeze_config("r", "a: 1\n", "abc")
    store.freeze_config("r", "a: 2\n", "def", note="forced abc -> def")
    store.freeze_config("r", "a: 3\n", "ghi", note="forced def -> ghi")
    assert store.frozen_config("r") == ("a: 3\n", "ghi")
    assert store.read_text(f"{store.run_dir('r')}/overrides.log").count("forced") == 2


@pytest.mark.slow
def test_training_on_s3_resumes_and_loads_checkpoints_from_it(s3, prefect_server, tmp_path, capsys, monkeypatch):
    """One iteration of `hicra train --warehouse s3://...`: SQL over it, check, a resume that skips every stage, and
    a second iteration whose rollout and update load iteration 0's checkpoint from S3 (downloaded once)."""
    url, run = s3("train"), f"s3-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path / "unused", run_id=run, iterations=1)))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing may land in a local folder named after the URL
    train = ["train", "--config", str(config), "--warehouse", url]
    cache = default_cache_dir() / "checkpoints" / run
    try:
        assert hicra(train) == 0
        store = Warehouse(url)
        hf = f"{store.checkpoint_dir(run, 0)}/hf"
        assert store.fs.isfile(f"{hf}/config.json") and store.fs.find(f"{store.checkpoint_dir(run, 0)}/deepspeed")
        assert list(work.iterdir()) == [] and not (tmp_path / "unused").exists()
        assert not cache.exists(), "iteration 0 starts from the base model: nothing to download"

        capsys.readouterr()
        counts = " UNION ALL ".join(
            f"SELECT '{t}' AS t, count(*) AS n FROM {t}"
            for t in ("rollouts", "scores", "planning", "advantages", "checkpoints", "train_steps", "commits")
        )
        assert hicra(["sql", "--warehouse", url, "--format", "json", counts]) == 0
        n = {row["t"]: row["n"] for row in json.loads(capsys.readouterr().out)}
        assert n["rollouts"] == n["scores"] == n["planning"] == n["advantages"] == 8 * 4
        assert n["checkpoints"] == 1 and n["train_steps"] >= 1 and n["commits"] == 4
        hf_path = query(url, "SELECT hf_path FROM checkpoints").column(0).to_pylist()
        assert hf_path == [store.relative(hf)]

        assert hicra(["warehouse", "check", "--warehouse", url]) == 0
        files = sum(len(c.files) for c in store.commits())
        assert capsys.readouterr().out == f"{files} committed files checked, 0 problems\n"

        before = store.commits()
        assert hicra(train) == 0
        out = capsys.readouterr().out
        for stage in STAGES:
            assert f"iteration 0 {stage}: committed, skipped" in out
        assert store.commits() == before

        assert hicra([*train, "--iterations", "2"]) == 0
        done = {(c.iteration, c.stage) for c in store.commits()}
        assert {(1, s) for s in STAGES} <= done
        (copy,) = cache.glob("iteration=0-*")  # iteration 0's export and DeepSpeed state, downloaded once
        assert (copy / "hf" / "config.json").is_file() and any((copy / "deepspeed").rglob("*"))
        policy = query(url, "SELECT DISTINCT policy_iteration FROM rollouts WHERE iteration = 1").column(0).to_pylist()
        assert policy == [0]
        assert store.check_files() == [] and list(work.iterdir()) == []
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_a_missing_s3_warehouse_is_an_error(s3, capsys):
    assert hicra(["sql", "--warehouse", s3("none"), "SELECT 1"]) == 2
    assert "no warehouse at 's3://" in capsys.readouterr().err


def test_local_roots_are_plain_folders(tmp_path):
    store = Warehouse(tmp_path / "wh")
    assert store.local and store.url == store.root == str(tmp_path / "wh")
    assert Path(store.checkpoint_dir("r", 0)) == tmp_path / "wh" / "checkpoints" / "r" / "iteration=0"
