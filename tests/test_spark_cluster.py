"""The Spark executor on a real standalone cluster (master and two workers on loopback) and under a kill:
the same outputs as the local executor, and a killed build loses only the units in flight."""

from __future__ import annotations

import json
import time

import pytest

from etl.executors import ExecutorConfig
from etl.fetch.stage import FetchConfig, run_fetch
from etl.ingest.sources import IngestConfig
from etl.ingest.stage import run_ingest
from etl.shards.stage import ShardConfig
from flows import stages
from tests.spark_cluster import standalone_cluster
from tests.tolcli import kill_group, start, tol
from warehouse.catalog import open_catalog
from warehouse.lake import read_image_blobs
from warehouse.versions import verify_version

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster")) as master:
        yield master


def test_a_standalone_cluster_writes_the_shards_the_local_executor_writes(curated, cluster):
    local = stages.shard(curated, ShardConfig("sa-local", samples_per_shard=64), ExecutorConfig(workers=1))
    spark = stages.shard(
        curated, ShardConfig("sa-spark", samples_per_shard=64), ExecutorConfig("spark", spark_master=cluster)
    )
    assert len(local["shards"]) > 4
    assert [s["sha256"] for s in spark["shards"]] == [s["sha256"] for s in local["shards"]]
    assert verify_version(curated, "sa-spark") == []
    assert verify_version(curated, "sa-spark", ExecutorConfig("spark", spark_master=cluster).build()) == []


def _fetched(catalog) -> list[dict]:
    with catalog.connect() as con:
        rows = con.sql("SELECT * FROM images ORDER BY record_id").to_arrow_table().to_pylist()
    jpegs = read_image_blobs(
        catalog.home, [(r["blob"], r["blob_offset"], r["bytes"]) for r in rows if r["blob"]]
    )
    volatile = ("run_id", "fetched_at", "seconds", "blob", "blob_offset")
    return [{k: v for k, v in r.items() if k not in volatile} for r in rows] + [jpegs]


def test_a_standalone_cluster_fetches_what_the_local_executor_fetches(server, tmp_path, cluster):
    homes = [open_catalog(tmp_path / name) for name in ("local", "spark")]
    for home in homes:
        run_ingest(home, IngestConfig("bioscan", api_url=server.base_url, allow_private_hosts=True))
    cfg = FetchConfig(allow_private_hosts=True, partition_rows=16)
    run_fetch(homes[0], cfg, executor=ExecutorConfig(workers=1), progress=False)
    summary = run_fetch(homes[1], cfg, executor=ExecutorConfig("spark", spark_master=cluster), progress=False)
    assert summary["n_in"] > 32 and summary["n_out"] > 0
    assert _fetched(homes[1]) == _fetched(homes[0])


def _complete_shards(root) -> set[str]:
    return {
        str(t.relative_to(root)) for t in root.glob("*/shard-*.tar") if t.with_suffix(".parquet").exists()
    }


def test_a_kill_during_a_spark_shard_build_loses_only_the_units_in_flight(curated):
    args = ["shard", "--version", "killed", "--samples-per-shard", "8"]
    proc = start(curated.home, *args, "--executor", "spark", "--spark-master", "local[2]")
    builds = curated.shards / ".builds"
    deadline = time.monotonic() + 300
    try:
        while True:
            roots = list(builds.glob("killed.*"))
            if roots and len(_complete_shards(roots[0])) >= 10:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no shards written in time"
            time.sleep(0.2)
    finally:
        kill_group(proc)  # the driver, its JVM and the Python workers: one process group
    (root,) = roots
    done = _complete_shards(root)
    tol(curated.home, *args)  # resumed by the local executor: the units do not depend on where they run
    with curated.connect() as con:
        details = json.loads(
            con.execute("""SELECT details FROM stage_runs WHERE stage = 'shard' AND status = 'succeeded'
                           AND details->>'version' = 'killed' ORDER BY ended_at DESC LIMIT 1""").fetchall()[
                0
            ][0]
        )
    # Only the units in flight were lost: every shard complete at the kill is reused. PySpark's worker daemon
    # puts itself in its own process group, so a worker may still finish its unit after the kill (reused is
    # then larger), never leave a partial one counted (verify below).
    assert len(done) <= details["reused_shards"] < details["shards"]
    assert verify_version(curated, "killed") == []
    whole = stages.shard(curated, ShardConfig("unkilled", samples_per_shard=8), ExecutorConfig(workers=1))
    resumed = json.loads((curated.shards / "killed" / "manifest.json").read_text())
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in whole["shards"]]
