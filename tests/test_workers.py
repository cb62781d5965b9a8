"""The production path, as an operator runs it: a Prefect server, `tol deploy` onto a process work pool, a run
requested with `prefect deployment run`, and `prefect worker start` running it in a process of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

BIN = Path(sys.executable).parent
RECIPE = """\
name: worker-test
variables: [URL]
sources:
  - name: gbif-world
    ingest: {source: gbif, api_url: "${URL}", allow_private_hosts: true}
  - name: eol-world
    ingest: {source: eol, api_url: "${URL}", allow_private_hosts: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_process_worker_runs_what_tol_deploy_registered(tmp_path, world):
    from sample_world import serve_sample_world
    from warehouse.catalog import Catalog

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    (tmp_path / "prefect").mkdir()
    home = tmp_path / "home"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(180):
            try:
                if requests.get(f"{api}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        with serve_sample_world(world.root) as sample:
            tol = [str(BIN / "tol"), "--home", str(home)]
            var = ["--var", f"URL={sample.base_url}"]
            out = subprocess.run(
                [*tol, "deploy", "--pool", "tol-test", "--recipe", str(recipe), *var],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, out.stderr
            assert "ingest/scheduled-ingest" in out.stdout
            prefect = str(BIN / "prefect")
            run = subprocess.run(
                [prefect, "deployment", "run", "ingest/scheduled-ingest"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stdout + run.stderr
            worker = subprocess.run(
                [prefect, "worker", "start", "--pool", "tol-test", "--run-once"],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        runs = requests.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        states = {r["name"]: r["state"]["type"] for r in runs}
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert list(states.values()) == ["COMPLETED"], (states, worker.stdout[-3000:])
    with Catalog(home).snapshot() as con:
        counts = dict(con.execute("SELECT source, count(*) FROM raw_records GROUP BY 1").fetchall())
        driven = con.execute(
            "SELECT count(*) FROM stage_runs JOIN recipes USING (recipe_sha256) WHERE name = 'worker-test'"
        ).fetchone()[0]
    assert set(counts) == {"gbif", "eol"} and min(counts.values()) > 0
    assert driven == 2  # both pulls, run by the worker, carry the recipe deploy recorded
