"""Concurrency: commands on one home at once, as users run them (scheduled ingestion, ad-hoc SQL, stages).
Nothing that should wait fails, and nothing is written twice."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from sample_world import serve_sample_world
from tests.tolcli import env, run_pipeline, sql, start, tol

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def homes(world, tmp_path_factory):
    """(server, pipeline, {stage: home before that stage}), built by running each command on its own."""
    with serve_sample_world(world.root) as srv:
        root = tmp_path_factory.mktemp("concurrency")
        pipeline, snaps = run_pipeline(root, world, srv.base_url, stop_before="train")
        before = {stage: snap[0] for stage, snap in snaps.items()}
        yield pipeline, before


def _copy(src, tmp_path, name="home"):
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _hold(home, seconds: float, *, read_only: bool) -> subprocess.Popen:
    """Another process holding the catalog for `seconds`, as a long query (read-only) or a writer does; returns
    once it holds it."""
    code = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro'); "
        "c.sql('SELECT count(*) FROM raw_records').fetchall(); print('holding', flush=True); "
        "time.sleep(float(sys.argv[3]))"
    )
    mode = "ro" if read_only else "rw"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(home / "catalog.duckdb"), mode, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env(),
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _twice_at_once(homes, stage: str, tmp_path, outs: list[str] | None = None):
    """Start the stage's command twice at once on a copy of the home before it; both must succeed."""
    pipeline, before = homes
    home = _copy(before[stage], tmp_path)
    args = dict(pipeline.commands())[stage]
    procs = [start(home, *args) for _ in range(2)]
    for proc in procs:
        out = _finish(proc)
        if outs is not None:
            outs.append(out)
    return home


def test_two_fetches_at_once_fetch_each_image_once(homes, tmp_path):
    outs: list[str] = []
    home = _twice_at_once(homes, "fetch", tmp_path, outs)
    assert any("busy" in out for out in outs), "the second fetch should have waited for the first"
    dup = sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM images_history")[0]
    assert dup["n"] == dup["d"] > 0
    runs = sql(home, "SELECT status, n_in FROM stage_runs WHERE stage = 'fetch' ORDER BY started_at")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"] and runs[1]["n_in"] == 0
    # The first fetch's parts (32 rows each) were compacted after it, while the second ran or waited.
    compacts = sql(home, "SELECT status, n_in FROM stage_runs WHERE stage = 'compact'")
    assert compacts and {c["status"] for c in compacts} == {"succeeded"}
    assert sum(c["n_in"] for c in compacts) >= 8


def test_two_ingests_of_one_source_at_once_duplicate_nothing(homes, tmp_path):
    home = _twice_at_once(homes, "ingest-gbif", tmp_path)
    dup = sql(home, "SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM raw_records_history")[0]
    assert dup["n"] == dup["d"] > 0


def test_the_same_shard_command_twice_at_once_builds_once(homes, tmp_path):
    home = _twice_at_once(homes, "shard", tmp_path)
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
    the stage waits for it and succeeds."""
    pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    reader = _hold(home, 8, read_only=True)
    t0 = time.monotonic()
    stage = tol(home, *dict(pipeline.commands())["resolve"], TOL_CATALOG_WAIT="60")
    waited = time.monotonic() - t0
    reader.wait()
    assert reader.returncode == 0 and stage.returncode == 0 and waited > 5
    assert sql(home, "SELECT status FROM stage_runs WHERE stage = 'resolve'") == [{"status": "succeeded"}]


def test_a_long_tol_sql_query_does_not_hold_a_stage_back(homes, tmp_path):
    """`tol sql` runs on a snapshot: the catalog is held only while its small tables are copied, so a stage
    started during a query of a minute commits at once (a 5 s wait would fail it otherwise)."""
    from tests.tolcli import kill_group

    pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    query = start(home, "sql", "SELECT sum(hash(i)) AS s FROM range(20000000000) t(i)")
    try:
        time.sleep(3)  # the snapshot is taken and the query is scanning
        assert query.poll() is None
        t0 = time.monotonic()
        stage = tol(home, *dict(pipeline.commands())["resolve"], TOL_CATALOG_WAIT="5")
        took = time.monotonic() - t0
        assert query.poll() is None, "the query should still be running"
    finally:
        kill_group(query)
    assert stage.returncode == 0 and took < 30
    assert sql(home, "SELECT status FROM stage_runs WHERE stage = 'resolve'") == [{"status": "succeeded"}]


def test_a_busy_catalog_beyond_the_wait_is_a_clear_error(homes, tmp_path):
    _pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    writer = _hold(home, 6, read_only=False)
    q = tol(home, "sql", "SELECT 1", check=False, TOL_CATALOG_WAIT="1")
    writer.wait()
    assert q.returncode == 1 and "stayed locked" in q.stderr and "TOL_CATALOG_WAIT" in q.stderr


@pytest.mark.prefect
def test_a_long_read_while_a_flow_starts(prefect_harness, homes, tmp_path):
    """The curate flow started while a reader holds the catalog: its first task waits, then all succeed."""
    from etl.fetch.stage import FetchConfig
    from flows.pipeline import curate_flow
    from flows.stages import ExecutorConfig

    _pipeline, before = homes
    home = _copy(before["resolve"], tmp_path)
    reader = _hold(home, 8, read_only=True)
    out = curate_flow(
        home=str(home), fetch=FetchConfig(allow_private_hosts=True), executor=ExecutorConfig(workers=1)
    )
    reader.wait()
    assert reader.returncode == 0
    assert {stage: r["n_out"] > 0 for stage, r in out.items()} == {
        "resolve": True,
        "fetch": True,
        "dedup": True,
    }
