"""Concurrency: commands on one home at once, as users run them (scheduled ingestion, ad-hoc SQL, stages).
Nothing that should wait fails, and nothing is written twice."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from etl.sample_world import serve_sample_world
from tests.tolcli import Pipeline, env, sql, start, tol, write_train_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def homes(world, tmp_path_factory):
    """(server, pipeline, {stage: home before that stage}), built by running each command on its own."""
    root = tmp_path_factory.mktemp("concurrency")
    home = root / "home"
    home.mkdir()
    with serve_sample_world(world.root) as srv:
        config = write_train_config(root / "train.json", world.replay_train)
        pipeline = Pipeline(srv.base_url, world.backbone, world.eval_dir, world.replay_train, config)
        before = {}
        for stage, args in pipeline.commands():
            if stage == "train":
                break
            before[stage] = root / f"before-{stage}"
            shutil.copytree(home, before[stage], symlinks=True)
            tol(home, *args)
        yield pipeline, before


def _copy(src, tmp_path, name="home"):
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_two_fetches_at_once_fetch_each_image_once(homes, tmp_path):
    pipeline, before = homes
    home = _copy(before["fetch"], tmp_path)
    args = dict(pipeline.commands())["fetch"]
    first, second = start(home, *args), start(home, *args)
    outs = [_finish(first), _finish(second)]
    assert any("busy" in out for out in outs), "the second fetch should have waited for the first"
    dup = sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM images_history")[0]
    assert dup["n"] == dup["d"] > 0
    runs = sql(home, "SELECT status, n_in FROM stage_runs WHERE stage = 'fetch' ORDER BY started_at")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"] and runs[1]["n_in"] == 0


def test_two_ingests_of_one_source_at_once_duplicate_nothing(homes, tmp_path):
    pipeline, before = homes
    home = _copy(before["ingest-gbif"], tmp_path)
    args = dict(pipeline.commands())["ingest-gbif"]
    procs = [start(home, *args) for _ in range(2)]
    for p in procs:
        _finish(p)
    dup = sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM raw_records_history")[0]
    assert dup["n"] == dup["d"] > 0


def test_the_same_shard_command_twice_at_once_builds_once(homes, tmp_path):
    pipeline, before = homes
    home = _copy(before["shard"], tmp_path)
    args = dict(pipeline.commands())["shard"]
    procs = [start(home, *args) for _ in range(2)]
    for p in procs:
        _finish(p)
    assert "match the manifest" in tol(home, "versions", "verify", "v1").stdout
    assert sql(home, "SELECT count(*) AS n FROM dataset_versions") == [{"n": 1}]


@pytest.mark.parametrize("stage", ["ingest-eol", "load_backbone", "resolve", "fetch", "dedup", "shard"])
def test_sql_in_a_loop_during_each_stage(homes, tmp_path, stage):
    """A `tol sql` about every second while the stage runs: every query answers, the stage succeeds."""
    pipeline, before = homes
    home = _copy(before[stage], tmp_path)
    proc = start(home, *dict(pipeline.commands())[stage])
    queries = failures = 0
    while proc.poll() is None or queries < 2:
        q = tol(home, "sql", "SELECT stage, status FROM stage_runs", "--format", "json", check=False)
        queries += 1
        failures += q.returncode != 0
        time.sleep(0.3)
    _finish(proc)
    assert failures == 0 and queries >= 2
    assert sql(home, "SELECT count(*) AS n FROM stage_runs WHERE status <> 'succeeded'") == [{"n": 0}]


def test_a_long_read_makes_a_stage_wait_not_fail(homes, tmp_path):
    """A reader holding the catalog for 8 s (what a long query does to DuckDB's lock) while a stage starts:
    the stage waits for it and succeeds; and a query during the stage's own long write waits too."""
    pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    hold = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
        "c.sql('SELECT count(*) FROM raw_records').fetchall(); print('holding', flush=True); time.sleep(8)"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", hold, str(home / "catalog.duckdb")], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline().strip() == "holding"
    t0 = time.monotonic()
    stage = tol(home, *dict(pipeline.commands())["resolve"], TOL_CATALOG_WAIT="60")
    waited = time.monotonic() - t0
    reader.wait()
    assert reader.returncode == 0 and stage.returncode == 0 and waited > 5
    assert sql(home, "SELECT status FROM stage_runs WHERE stage = 'resolve'") == [{"status": "succeeded"}]


def test_a_busy_catalog_beyond_the_wait_is_a_clear_error(homes, tmp_path):
    _pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    hold = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('holding', flush=True); time.sleep(6)"
    writer = subprocess.Popen(
        [sys.executable, "-c", hold, str(home / "catalog.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    assert writer.stdout.readline().strip() == "holding"
    q = tol(home, "sql", "SELECT 1", check=False, TOL_CATALOG_WAIT="1")
    writer.wait()
    assert q.returncode == 1 and "stayed locked" in q.stderr and "TOL_CATALOG_WAIT" in q.stderr


@pytest.mark.prefect
def test_a_long_read_while_a_flow_starts(prefect_harness, homes, tmp_path):
    """The curate flow started while a reader holds the catalog: its first task waits, then all succeed."""
    from flows.pipeline import curate_flow

    _pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    hold = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
        "c.sql('SELECT count(*) FROM raw_records').fetchall(); print('holding', flush=True); time.sleep(8)"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", hold, str(home / "catalog.duckdb")], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline().strip() == "holding"
    out = curate_flow(home=str(home), allow_private_hosts=True, workers=1)
    reader.wait()
    assert reader.returncode == 0
    assert {stage: r["n_out"] > 0 for stage, r in out.items()} == {
        "resolve": True,
        "fetch": True,
        "dedup": True,
    }
