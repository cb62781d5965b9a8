"""The production path, as an operator runs it: a Prefect server, `tol deploy` onto a process work pool, a run
requested with `prefect deployment run`, and `prefect worker start` running it in a process of its own."""

from __future__ import annotations

import subprocess

import pytest
import requests

from tests.prefect_server import BIN, prefect_server

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

RECIPE = """\
name: worker-test
variables: [URL]
sources:
  - name: gbif-world
    ingest: {source: gbif, api_url: "${URL}", allow_private_hosts: true}
  - name: eol-world
    ingest: {source: eol, api_url: "${URL}", allow_private_hosts: true}
"""


def test_a_process_worker_runs_what_tol_deploy_registered(tmp_path, world):
    from sample_world import serve_sample_world
    from warehouse.catalog import Catalog

    home = tmp_path / "home"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    with prefect_server(tmp_path) as (api, env):
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
    assert list(states.values()) == ["COMPLETED"], (states, worker.stdout[-3000:])
    with Catalog(home).snapshot() as con:
        counts = dict(con.execute("SELECT source, count(*) FROM raw_records GROUP BY 1").fetchall())
        driven = con.execute(
            "SELECT count(*) FROM stage_runs JOIN recipes USING (recipe_sha256) WHERE name = 'worker-test'"
        ).fetchone()[0]
    assert set(counts) == {"gbif", "eol"} and min(counts.values()) > 0
    assert driven == 2  # both pulls, run by the worker, carry the recipe deploy recorded
