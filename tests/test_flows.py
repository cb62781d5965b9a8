"""The whole pipeline through Prefect, on a fresh home: every stage runs and the model beats chance."""

from itertools import pairwise

import pytest


@pytest.mark.prefect
@pytest.mark.slow
def test_demo_flow_end_to_end(prefect_harness, tmp_path):
    from flows.demo import demo_flow
    from warehouse.catalog import open_catalog

    home = str(tmp_path / "home")
    summary = demo_flow(home=home, steps=80)
    with open_catalog(home).connect() as con:
        stages = {
            r[0] for r in con.execute("SELECT stage FROM stage_runs WHERE status = 'succeeded'").fetchall()
        }
        ingests = con.execute(
            "SELECT started_at, ended_at FROM stage_runs WHERE stage = 'ingest' ORDER BY started_at"
        ).fetchall()
        recipe_runs = con.execute(
            "SELECT count(*) FROM stage_runs WHERE recipe_sha256 = ?", [summary["recipe_sha256"]]
        ).fetchone()[0]
    assert stages >= {"ingest", "resolve", "fetch", "dedup", "shard", "train", "evaluate"}
    # The four pulls share the sample world's host, whose tag limit is 1: they take turns.
    assert len(ingests) == 4 and all(a[1] <= b[0] for a, b in pairwise(ingests))
    assert recipe_runs >= 4 + 5 + 4  # the pulls, the curation stages, train and its evaluations
    zs = summary["evaluation"]["sample-heldout-zero-shot"]
    base = summary["random_init_evaluation"]["sample-heldout-zero-shot"]
    assert zs["zero_shot_taxon_top1"] > 3 * zs["zero_shot_taxon_chance"], zs
    assert zs["zero_shot_taxon_top1"] > base["zero_shot_taxon_top1"]
    few = summary["evaluation"]["sample-heldout-few-shot"]
    assert (
        few["few_shot_k1_acc"]
        > summary["random_init_evaluation"]["sample-heldout-few-shot"]["few_shot_k1_acc"]
    )
    from flows.report import demo_report

    assert "zero-shot top-1" in demo_report(
        open_catalog(home),
        summary,
        since=__import__("datetime").datetime.min.replace(tzinfo=__import__("datetime").UTC),
    )


@pytest.mark.prefect
def test_deployments_without_a_recipe_have_no_schedule_and_quick_run_defaults(prefect_harness, tmp_path):
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import train_flow
    from flows.serve import build_deployments

    deployments = {d.name: d for d in build_deployments(str(tmp_path))}
    assert set(deployments) == {"scheduled-ingest", "curate", "train", "evaluate"}
    assert not deployments["scheduled-ingest"].schedules  # it would not know what to pull
    assert "No recipe" in deployments["scheduled-ingest"].description
    ui_fields = parameter_schema(train_flow).properties
    assert {"dataset_version", "preset", "replay_batch_size", "steps", "batch_size", "devices"} <= set(
        ui_fields
    )
    assert all(field.get("description") for field in ui_fields.values()), ui_fields
    train = deployments["train"]
    # The home is operator-only (README: Trust model): runs read it from TOL_HOME, not from the form.
    assert train.parameters == {"training_slots": 1}
    assert "home" not in train._parameter_openapi_schema.properties
    assert train_flow.validate_parameters(train.parameters)  # Quick run's parameters are valid as they are


def test_a_stage_setting_reaches_the_stage_from_the_ui_form(tmp_path):
    """`dedup.near_k` as the UI shows it (the flow's parameter schema) and sends it (JSON) arrives in the
    DedupConfig the dedup task is called with. No server is needed for either step."""
    from prefect.utilities.callables import parameter_schema

    from etl.dedup.stage import DedupConfig
    from flows.pipeline import curate_flow

    schema = parameter_schema(curate_flow).model_dump()
    near_k = schema["definitions"]["DedupConfig"]["properties"]["near_k"]
    assert near_k["type"] == "integer" and near_k["default"] == DedupConfig().near_k
    fetch_fields = schema["definitions"]["FetchConfig"]["properties"]
    assert {"threads", "http", "deadline", "max_internal_error_rate", "image"} <= set(fetch_fields)
    assert "min_side" in schema["definitions"]["ImageConfig"]["properties"]
    assert {"per_host", "host_rate", "max_retries"} <= set(schema["definitions"]["HttpConfig"]["properties"])
    params = curate_flow.validate_parameters({"home": str(tmp_path), "dedup": {"near_k": 3}})
    assert params["dedup"] == DedupConfig(near_k=3)


@pytest.mark.prefect
@pytest.mark.slow
def test_ingest_with_a_dead_source_finishes_the_others_then_fails(prefect_harness, server, tmp_path):
    import socket

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    from etl.ingest.sources import IngestConfig
    from flows.pipeline import ingest_flow
    from flows.recipe import SourcePull
    from warehouse.catalog import open_catalog

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    pulls = [
        SourcePull("gbif-world", IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True)),
        SourcePull(
            "eol-dead",
            IngestConfig("eol", api_url=dead, allow_private_hosts=True),
            retries=1,
            retry_delay_seconds=0,
        ),
        SourcePull(
            "bioscan-world", IngestConfig("bioscan", api_url=server.base_url, allow_private_hosts=True)
        ),
        SourcePull(
            "fathomnet-world", IngestConfig("fathomnet", api_url=server.base_url, allow_private_hosts=True)
        ),
    ]
    home = str(tmp_path / "home")
    state = ingest_flow(home, pulls=pulls, return_state=True)
    assert state.is_failed() and "1 of 4 pulls failed: eol-dead" in state.message, state.message
    with open_catalog(home).connect() as con:
        counts = dict(con.execute("SELECT source, count(*) FROM raw_records GROUP BY 1").fetchall())
        runs = con.execute(
            "SELECT config->>'source', status FROM stage_runs WHERE stage = 'ingest'"
        ).fetchall()
    assert set(counts) == {"gbif", "bioscan", "fathomnet"} and min(counts.values()) > 0
    assert sorted(runs) == sorted(
        [("gbif", "succeeded"), ("bioscan", "succeeded"), ("fathomnet", "succeeded")]
        + [("eol", "failed")] * 2  # the pull's own retry, also recorded
    )
    with get_client(sync_client=True) as client:
        (summary,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-summary"])),
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}),
        )
        names = {
            t.name
            for t in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
            )
        }
    rows = {
        r["pull"]: r
        for r in (summary.data if isinstance(summary.data, list) else __import__("json").loads(summary.data))
    }
    assert rows["eol-dead"]["status"] == "failed" and "Connection" in rows["eol-dead"]["error"]
    assert all(
        rows[p]["status"] == "succeeded" and rows[p]["new"] > 0
        for p in ("gbif-world", "bioscan-world", "fathomnet-world")
    )
    assert "eol-dead" in summary.description
    host = server.base_url.split("//")[1]
    assert f"ingest gbif-world (gbif from {host})" in names


@pytest.mark.prefect
def test_deploy_registers_the_recipe_deployments_to_a_work_pool(prefect_harness, tmp_path):
    """The production path: `tol deploy` puts the four deployments on a process pool, each naming its flow
    by module path (what a worker with this package installed imports), with the recipe's defaults."""
    from prefect.client.orchestration import get_client

    from flows.demo import SAMPLE_RECIPE
    from flows.recipe import load_recipe
    from flows.serve import deploy

    recipe = load_recipe(SAMPLE_RECIPE, {"SAMPLE_WORLD": "/w", "SAMPLE_WORLD_URL": "http://127.0.0.1:9"})
    home = str(tmp_path / "home")
    names = deploy(home, "tol-test-pool", recipe)
    assert sorted(names) == ["curate/curate", "evaluate/evaluate", "ingest/scheduled-ingest", "train/train"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("tol-test-pool").type == "process"
        train = client.read_deployment_by_name("train/train")
        ingest = client.read_deployment_by_name("ingest/scheduled-ingest")
    assert train.work_pool_name == "tol-test-pool" and train.entrypoint == "flows.pipeline.train_flow"
    assert train.parameters["dataset_version"] == "sample-v1"
    assert train.parameters["evaluate_tasks"][0] == "sample-heldout-zero-shot"
    assert train.parameters["recipe_sha256"] == recipe.sha256
    assert train.parameter_openapi_schema["properties"]["dataset_version"]["enum"] == ["latest", "sample-v1"]
    assert train.parameter_openapi_schema["properties"]["preset"]["enum"] == ["cpu-tiny", "gpu-paper"]
    assert "replay" in train.parameter_openapi_schema["properties"]["replay_path"]["description"]
    (schedule,) = ingest.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "Europe/Paris")
    assert [p["name"] for p in ingest.parameters["pulls"]][:2] == ["gbif-sample", "eol-sample"]
    from warehouse.catalog import Catalog  # the recipe is recorded in the catalog the deployments use

    with Catalog(tmp_path / "home").snapshot() as con:
        assert con.execute("SELECT name FROM recipes").fetchall() == [("sample-world",)]


def test_quick_run_defaults_take_the_latest_version_and_say_replay_is_off(curated):
    """What the train deployment's defaults (no recipe) amount to: the newest version, and no replay (the
    preset asks for it, but there is no replay set to draw from), said in the run's log."""
    import logging

    from flows.pipeline import LATEST, train_config
    from tests.conftest import log_lines

    with log_lines("tol.train", logging.WARNING) as lines:  # training.config says it, for every caller
        cfg = train_config(curated, "cpu-tiny", LATEST, {})
    assert cfg.dataset_version == "t1" and cfg.replay_batch_size == 0 and cfg.replay_path is None
    assert any(line.startswith("replay off: preset cpu-tiny asks for 8") for line in lines), lines
    with_replay = train_config(curated, "cpu-tiny", "t1", {"replay_path": "/r"})
    assert with_replay.replay_batch_size == 8
    with pytest.raises(LookupError, match="does not exist; built: t1"):
        train_config(curated, "cpu-tiny", "t2", {})


def test_curation_tasks_retry_a_busy_catalog_and_nothing_else():
    from prefect.states import Completed, Failed

    from flows.pipeline import curation_step_task, evaluate_task, retry_when_busy
    from warehouse.catalog import CatalogBusyError
    from warehouse.locks import StageBusyError

    assert retry_when_busy(None, None, Failed(data=CatalogBusyError("held by tol sql --write")))
    assert retry_when_busy(None, None, Failed(data=StageBusyError("another fetch")))
    assert not retry_when_busy(None, None, Failed(data=ValueError("bad config")))
    assert not retry_when_busy(None, None, Completed(data=1))
    assert all(
        t.retries == 2 and t.retry_condition_fn is retry_when_busy
        for t in (curation_step_task, evaluate_task)
    )


def test_a_training_run_without_tasks_is_scored_on_its_versions_heldout_split(prefect_harness, home_copy):
    """Every run gets a number: with no evaluate_tasks, zero-shot on the version's own val split (species
    and each rank), stored in eval_results under the task `heldout-<version>`."""
    from flows.pipeline import train_flow
    from tests.test_training import MICRO

    overrides = {
        "model_cfg": MICRO,
        "batch_size": 8,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": 2,
    }
    out = train_flow(str(home_copy.home), dataset_version="t1", steps=2, overrides=overrides)
    scores = out["evaluation"]["heldout-t1"]
    assert scores["n"] > 0 and 0.0 <= scores["zero_shot_taxon_top1"] <= 1.0
    rows = home_copy.query_arrow(
        "SELECT DISTINCT metric FROM eval_results WHERE task = 'heldout-t1' AND run_id = ?", [out["run_id"]]
    ).to_pylist()
    metrics = {r["metric"] for r in rows}
    assert "zero_shot_taxon_top1" in metrics and "zero_shot_taxon_rank_acc_genus" in metrics, metrics


def test_the_train_forms_version_choices_follow_the_versions_built(prefect_harness, home_copy):
    """A version built after the deployments were registered is offered in the train form: each curate
    build (and each training run) refreshes the deployment's choices on the server."""
    from prefect.client.orchestration import get_client

    from etl.shards.stage import ShardConfig
    from flows import stages
    from flows.pipeline import LATEST, TRAIN_DEPLOYMENT, refresh_train_choices
    from flows.serve import build_deployments

    for d in build_deployments(str(home_copy.home)):
        d.apply()

    def choices() -> list[str]:
        with get_client(sync_client=True) as client:
            schema = client.read_deployment_by_name(TRAIN_DEPLOYMENT).parameter_openapi_schema
        return schema["properties"]["dataset_version"]["enum"]

    assert choices() == [LATEST, "t1"]
    stages.shard(home_copy, ShardConfig("t-later", samples_per_shard=64))
    assert choices() == [LATEST, "t1"]  # the server's copy is what the form shows
    assert refresh_train_choices(home_copy) == [LATEST, "t-later", "t1"]
    assert choices() == [LATEST, "t-later", "t1"]
