"""Fault injection: every stage, run as its own `tol` process, is killed with SIGKILL at seeded random
moments, then run again; the home must end as an uninterrupted run leaves it: nothing lost, nothing
duplicated, no run left `running`, the killed process's workers gone.

`TOL_FAULT_KILLS` sets the kills per stage (3 by default, as in CI); `TOL_FAULT_SEED` the seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import pytest

from sample_world import serve_sample_world
from tests.tolcli import alive, children, run_pipeline, sql, start, tol, wait_until

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("TOL_FAULT_KILLS", "3"))
SEED = int(os.environ.get("TOL_FAULT_SEED", "0"))
STAGES = [
    "ingest-gbif",
    "ingest-eol",
    "ingest-bioscan",
    "ingest-fathomnet",
    "load_backbone",
    "resolve",
    "fetch",
    "dedup",
    "shard",
    "train",
]


@pytest.fixture(scope="module")
def pipeline_run(world, tmp_path_factory):
    """One uninterrupted run, command by command, with the home copied before and after each stage."""
    with serve_sample_world(world.root) as srv:
        _pipeline, snaps = run_pipeline(
            tmp_path_factory.mktemp("faults"), world, srv.base_url, train_steps=30, checkpoint_every=5
        )
        yield snaps


def _rows(home: Path, query: str) -> list[tuple]:
    return sorted(tuple(r.values()) for r in sql(home, query))


def _state(home: Path, stage: str) -> dict:
    """What the stage is responsible for, without run ids and timestamps."""
    if stage.startswith("ingest"):
        dup = sql(
            home,
            "SELECT count(*) - count(DISTINCT (record_id, payload_hash)) AS d FROM raw_records_history",
        )
        return {
            "raw": _rows(home, "SELECT record_id, payload_hash, drop_reason FROM raw_records_history"),
            "duplicated": dup[0]["d"],
            "checkpoints": _rows(home, "SELECT source, query_key, complete FROM ingest_checkpoints"),
        }
    if stage == "load_backbone":
        return {
            "backbones": _rows(home, "SELECT backbone_version, n_taxa, n_vernacular FROM backbones"),
            "taxa": _rows(home, "SELECT taxon_id, scientific_name, kingdom, common_name FROM taxa"),
        }
    if stage == "resolve":
        return {"resolutions": _rows(home, "SELECT record_id, taxon_id, match_type, reason FROM resolutions")}
    if stage == "fetch":
        dup = sql(home, "SELECT count(*) - count(DISTINCT record_id) AS d FROM images_history")
        return {
            "images": _rows(home, "SELECT record_id, status, md5, phash, width, height FROM images"),
            "fetched_twice": dup[0]["d"],
        }
    if stage == "dedup":
        query = "SELECT record_id, kept, reason, duplicate_of FROM dedup_decisions"  # the latest run's
        return {"decisions": _rows(home, query)}
    if stage == "shard":
        assert "match the manifest" in tol(home, "versions", "verify", "v1").stdout
        manifest = json.loads(tol(home, "versions", "show", "v1").stdout)
        return {
            "samples": _rows(
                home, "SELECT split, shard, key, record_id FROM shard_samples WHERE version = 'v1'"
            ),
            "shards": [(s["split"], s["name"], s["n"], s["sha256"]) for s in manifest["shards"]],
            "versions": _rows(
                home, "SELECT version, n_samples, n_train, n_val, n_shards FROM dataset_versions"
            ),
        }
    if stage == "train":
        import torch

        metrics = (home / "runs" / "fault-run" / "metrics.jsonl").read_text().splitlines()
        ckpt = torch.load(home / "runs" / "fault-run" / "checkpoints" / "latest.pt", weights_only=False)
        return {
            "steps_logged": [json.loads(line)["step"] for line in metrics],
            "step": ckpt["step"],
            "weights": dict(ckpt["model"]),
            "status": _rows(home, "SELECT run_id, status FROM training_runs"),
        }
    raise AssertionError(stage)


def _same(got: dict, want: dict) -> None:
    for key, value in want.items():
        if key == "weights":
            import torch

            for name, tensor in value.items():
                assert torch.allclose(got[key][name], tensor, atol=1e-5), f"weights differ at {name}"
        else:
            assert got[key] == value, key


def _kill_at(home: Path, args: list[str], moment: float) -> bool:
    """Start the command, SIGKILL its main process after `moment` s (as `kill -9` would); True if it was
    still running then. The workers it started must be gone soon after."""
    proc = start(home, *args)
    try:
        if wait_until(lambda: proc.poll() is not None, moment):
            return False
        kids = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_until(lambda: not any(alive(k) for k in kids), 10), "workers outlived their parent"
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_reruns_to_the_uninterrupted_result(pipeline_run, stage, tmp_path):
    before, after, seconds, args = pipeline_run[stage]
    want = _state(after, stage)
    rerun = [*args, "resume=latest"] if stage == "train" else args
    rng = random.Random(f"{SEED}:{stage}")
    killed = 0
    for i in range(KILLS):
        home = tmp_path / f"home-{i}"
        shutil.copytree(before, home, symlinks=True)
        moment = rng.uniform(0.1, 1.0) * seconds
        killed += _kill_at(home, args, moment)
        if rng.random() < 0.5:  # sometimes killed twice before it is let finish
            killed += _kill_at(home, rerun, rng.uniform(0.1, 1.0) * seconds)
        tol(home, *rerun)
        _same(_state(home, stage), want)
        left = sql(home, "SELECT run_id, stage FROM stage_runs WHERE status = 'running'")
        assert left == [], f"runs left running after a kill at {moment:.2f} s: {left}"
        assert not sql(home, "SELECT run_id FROM training_runs WHERE status = 'running'")
    assert killed >= 1, f"no kill landed while {stage} ran ({seconds:.1f} s uninterrupted)"
    print(f"faults {stage}: {killed} kills landed in {KILLS} rounds ({seconds:.1f} s uninterrupted)")
