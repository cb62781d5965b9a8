"""The Prefect UI as a person uses it: headless Chromium (Debian's, driven by Playwright) clicks Run -> Quick
run on the `train` deployment of `tol serve`, and the run is watched until it completes.

The stages before training run as the separate command a user types (`tol recipe run --until curate`); the
server is the real `tol serve --recipe`, so Quick run uses the defaults a recipe gives the deployment."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

TOL = str(Path(sys.executable).parent / "tol")
STEPS, LOG_EVERY = 40, 10


def _chromium() -> str:
    path = os.environ.get("TOL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "the browser test needs Chromium: apt-get install chromium (`make system-deps` installs it)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    """This environment without Prefect settings: each command finds its server the way a user's would."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def _post(api: str, path: str, body: dict) -> list[dict]:
    r = requests.post(f"{api}{path}", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


def _logs(api: str, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "sort": "TIMESTAMP_ASC"}
    return [row["message"] for row in _post(api, "/logs/filter", body)]


def _wait(what: str, fn, timeout: float, every: float = 2.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_quick_run_of_train_from_the_ui(tmp_path):
    from playwright.sync_api import sync_playwright

    from flows.demo import SAMPLE_RECIPE
    from sample_world import build_sample_world, serve_sample_world
    from sample_world.build import SampleWorldConfig
    from warehouse.catalog import Catalog

    chromium = _chromium()
    home = tmp_path / "home"
    world = build_sample_world(home / "sample_world", SampleWorldConfig(seed=0))
    recipe = tmp_path / "recipe.yaml"  # the shipped recipe, with a short training that logs often
    text = SAMPLE_RECIPE.read_text()
    assert "  steps: 300\n" in text
    recipe.write_text(text.replace("  steps: 300\n", f"  steps: {STEPS}\n  log_every: {LOG_EVERY}\n"))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve_sample_world(world.root, port=0) as sample:
        variables = ["--var", f"SAMPLE_WORLD={world.root}", "--var", f"SAMPLE_WORLD_URL={sample.base_url}"]
        subprocess.run(
            [TOL, "--home", str(home), "recipe", "run", str(recipe), "--until", "curate", *variables],
            env=_env(),
            check=True,
            timeout=900,
            capture_output=True,
        )
        port = _free_port()
        api = f"http://127.0.0.1:{port}/api"
        log_file = (tmp_path / "serve.log").open("w")
        serve = subprocess.Popen(
            [TOL, "--home", str(home), "serve", "--port", str(port), "--recipe", str(recipe), *variables],
            env=_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait("the four deployments", lambda: _deployments(api) >= 4, 240)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/deployments")
                page.get_by_role("link", name="train", exact=True).first.click()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_role("button", name="Quick run").click()
                link = page.locator("a[href*='/runs/flow-run/']").first  # the toast's link to the new run
                link.wait_for(timeout=30_000)
                run_id = link.get_attribute("href").rsplit("/", 1)[-1]
                page.screenshot(path=str(shots / "1-quick-run.png"))
                # The run page redraws its timeline without pause (most of a core in Chromium): it is open
                # only for the screenshots, so the training it shows is not slowed by watching it.
                page.goto("about:blank")
                _wait(
                    "a progress line in the run's log",
                    lambda: any(m.startswith(f"step {LOG_EVERY}/{STEPS}") for m in _logs(api, run_id)),
                    600,
                )
                page.goto(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}")
                page.get_by_text(f"step {LOG_EVERY}/{STEPS}").first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / "2-running-with-progress.png"), full_page=True)
                page.goto("about:blank")
                state = _wait("the run to finish", lambda: _final_state(api, run_id), 900)
                page.goto(f"http://127.0.0.1:{port}/runs/flow-run/{run_id}")
                page.get_by_text("Artifacts", exact=True).first.click()
                page.get_by_text("train-metrics").first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / "3-completed-artifacts.png"), full_page=True)
                browser.close()
            logs = _logs(api, run_id)
            body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
            artifacts = {a["key"]: a for a in _post(api, "/artifacts/filter", body) if a["key"]}
            body = {"artifacts": {"key": {"any_": ["evaluate-summary"]}}, "sort": "CREATED_DESC", "limit": 1}
            evaluation = _post(api, "/artifacts/filter", body)
            body["artifacts"]["key"]["any_"] = ["evaluate-plots"]
            plots = _post(api, "/artifacts/filter", body)
        finally:
            serve.terminate()
            serve.wait(timeout=60)
            log_file.close()

    assert state == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
    progress = [m for m in logs if m.startswith("step ") and f"/{STEPS}  loss" in m]
    assert len(progress) == STEPS // LOG_EVERY, logs  # every log_every steps, with loss, samples/s, ETA
    assert all("samples/s" in m and "ETA" in m for m in progress)
    assert {"train-progress", "train-metrics", "train-loss-curve"} <= set(artifacts), sorted(artifacts)
    assert artifacts["train-progress"]["data"] == 100.0
    metrics = {row["metric"]: row["value"] for row in _table(artifacts["train-metrics"])}
    assert metrics["steps"] == STEPS and metrics["loss_bio"] > 0
    assert "data:image/png;base64," in artifacts["train-loss-curve"]["data"]
    assert evaluation and "this run" in evaluation[0]["data"]
    assert plots and plots[0]["data"].count("data:image/png;base64,") >= 4  # PCA and t-SNE maps, 3-D view
    catalog = Catalog(home)
    with catalog.snapshot() as con:
        runs = con.execute(
            "SELECT run_id, status, version, steps FROM training_runs ORDER BY started_at"
        ).fetchall()
        assert len(runs) == 1 and runs[0][1:] == ("succeeded", "sample-v1", STEPS), runs
        train_run = runs[0][0]
        tasks = {
            r[0]
            for r in con.execute("SELECT task FROM eval_results WHERE run_id = ?", [train_run]).fetchall()
        }
        recipes = con.execute(
            "SELECT count(DISTINCT recipe_sha256) FROM stage_runs WHERE stage IN ('train', 'evaluate')"
        ).fetchone()[0]
    assert tasks == {
        "sample-heldout-zero-shot",
        "sample-heldout-few-shot",
        "sample-heldout-linear-probe",
        "sample-heldout-life-stage",
    }
    assert recipes == 1
    for name in ("1-quick-run.png", "2-running-with-progress.png", "3-completed-artifacts.png"):
        assert (shots / name).stat().st_size > 10_000


def _table(artifact: dict) -> list[dict]:
    import json

    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def _deployments(api: str) -> int:
    try:
        return len(_post(api, "/deployments/filter", {}))
    except requests.RequestException:
        return 0


def _final_state(api: str, run_id: str) -> str | None:
    state = requests.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
    return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None
