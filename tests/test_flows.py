"""The whole pipeline through Prefect, on a fresh home: every stage runs and the model beats chance."""

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
    assert stages >= {"ingest", "resolve", "fetch", "dedup", "shard", "train", "evaluate"}
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
def test_deployments_build_with_schedule(prefect_harness, tmp_path):
    from flows.serve import INGEST_CRON, build_deployments

    deployments = {d.name: d for d in build_deployments(str(tmp_path))}
    assert set(deployments) == {"scheduled-ingest", "curate", "train", "evaluate"}
    schedule = deployments["scheduled-ingest"].schedules[0].schedule
    assert schedule.cron == INGEST_CRON
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import train_flow

    ui_fields = parameter_schema(train_flow).properties
    assert {"dataset_version", "preset", "replay_batch_size", "steps", "batch_size", "devices"} <= set(
        ui_fields
    )
    assert deployments["train"].parameters["home"] == str(tmp_path.resolve())


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
