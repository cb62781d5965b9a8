"""Prefect on a real database, as the README tells operators to run it for several workers: a throwaway
PostgreSQL cluster (Debian's `postgresql`, initdb in a temporary folder, a loopback port), `prefect server
start` on it, `tol deploy --pool`, two process workers, and a scheduled ingest and a training run that
complete with their artifacts. The deployments' operator-only settings reach the workers' runs through the
job variables `tol deploy` writes (README: Trust model)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.prefect_server import BIN, free_port, prefect_server

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

RECIPE = """\
name: postgres-test
variables: [URL]
sources:
  - name: gbif-world
    ingest: {source: gbif, api_url: "${URL}", allow_private_hosts: true}
"""


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(
            "this test needs Debian's postgresql: apt-get install postgresql (`make system-deps` installs it)"
        )
    return found[-1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture()
def postgres():
    """A PostgreSQL cluster on a loopback port, its data in a temporary folder of its own (pytest's are
    private to root, and the server runs as `postgres`); yields the SQLAlchemy URL."""
    root = Path(tempfile.mkdtemp(prefix="tol-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    init = subprocess.run(
        _as_postgres_user(
            [_pg_bin("initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"]
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    server = subprocess.Popen(
        _as_postgres_user(
            [
                _pg_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(60):
            ready = subprocess.run(
                [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True, timeout=10
            )
            if ready.returncode == 0:
                break
            time.sleep(0.5)
        made = subprocess.run(
            [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_runs(api: str, n: int, seconds: float) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        runs = requests.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        states = {
            r["name"] + ":" + r["flow_id"][:8]: r["state"]["type"]
            for r in runs
            if not r.get("parent_task_run_id")
        }
        done = [s for s in states.values() if s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
        if len(done) >= n:
            return states
        time.sleep(2)
    return states


def test_prefect_on_postgres_with_two_process_workers(postgres, tmp_path, world, curated):
    from sample_world import serve_sample_world
    from tests.test_training import MICRO
    from warehouse.catalog import Catalog

    home = tmp_path / "home"
    shutil.copytree(curated.home, home, symlinks=True)  # holds version t1 to train on
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    workers: list[subprocess.Popen] = []
    prefect = str(BIN / "prefect")
    settings = {"PREFECT_API_DATABASE_CONNECTION_URL": postgres, "OMP_NUM_THREADS": "1"}
    with prefect_server(tmp_path, **settings) as (api, env):
        with serve_sample_world(world.root) as sample:
            tol = [str(BIN / "tol"), "--home", str(home)]
            out = subprocess.run(
                [
                    *tol,
                    "deploy",
                    "--pool",
                    "tol-pg",
                    "--recipe",
                    str(recipe),
                    "--var",
                    f"URL={sample.base_url}",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, out.stderr
            train_params = {
                "dataset_version": "t1",
                "steps": 2,
                "batch_size": 8,
                "overrides": {"model_cfg": MICRO, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2},
            }
            for name, params in (("ingest/scheduled-ingest", {}), ("train/train", train_params)):
                run = subprocess.run(
                    [prefect, "deployment", "run", name, "--params", json.dumps(params)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert run.returncode == 0, run.stdout + run.stderr
            for i in range(2):
                worker_log = (tmp_path / f"worker{i}.log").open("w")
                workers.append(
                    subprocess.Popen(
                        [prefect, "worker", "start", "--pool", "tol-pg", "--name", f"w{i}"],
                        env=env,
                        stdout=worker_log,
                        stderr=subprocess.STDOUT,
                    )
                )
            try:
                states = _wait_for_runs(api, 2, 600)
            finally:
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(timeout=60)
        artifacts = requests.post(f"{api}/artifacts/filter", json={}, timeout=10).json()
        keys = {a.get("key") for a in artifacts}
        found = requests.post(f"{api}/work_pools/tol-pg/workers/filter", json={}, timeout=10).json()
        names = {w["name"] for w in found}
    logs = "".join((tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(len(workers)))
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], (states, logs)
    assert {"ingest-summary", "train-metrics", "evaluate-summary"} <= keys, keys
    assert names == {"w0", "w1"}
    with Catalog(home).snapshot() as con:
        trained = con.execute("SELECT status FROM training_runs WHERE version = 't1'").fetchall()
        pulled = con.execute(
            "SELECT count(*) FROM stage_runs JOIN recipes USING (recipe_sha256)"
            " WHERE name = 'postgres-test' AND stage = 'ingest' AND status = 'succeeded'"
        ).fetchone()[0]
        scored = con.execute("SELECT count(*) FROM eval_results WHERE task = 'heldout-t1'").fetchone()[0]
    assert ("succeeded",) in trained and pulled == 1 and scored > 0
