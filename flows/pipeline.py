"""Prefect flows over `flows.stages`: `ingest`, `curate`, `train`, `evaluate`.

Each task is one call of a stage function. Flow parameters are the stages' own typed configs (dataclasses),
so the UI's run form shows every setting a stage has (for example `dedup.near_k`), with its default, and
checks it before the run starts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.logging.handlers import APILogHandler

from etl.dedup.stage import DedupConfig
from etl.fetch.stage import FetchConfig
from etl.ingest.sources import IngestConfig
from etl.shards.stage import ShardConfig
from flows import stages
from flows.stages import ExecutorConfig
from warehouse.catalog import open_catalog
from warehouse.contracts import SOURCES, check_name


@contextmanager
def stage_logs_to_prefect() -> Iterator[None]:
    """Forward the stages' own loggers (`tol.<stage>`) to the Prefect run log (the UI shows them live) for
    the length of a flow; a nested flow reuses its parent's handler."""
    logger = logging.getLogger("tol")
    if any(isinstance(h, APILogHandler) for h in logger.handlers):
        yield
        return
    handler = APILogHandler()
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=10)
def ingest_task(home: str, cfg: IngestConfig) -> dict[str, Any]:
    return stages.ingest(open_catalog(home), cfg)


@flow(name="ingest", log_prints=True)
def ingest_flow(
    home: str = "tol-data",
    sources: list[str] | None = None,
    api_urls: dict[str, str] | None = None,
    paths: dict[str, str] | None = None,
    params: dict[str, dict[str, str]] | None = None,
    limit: int | None = None,
    page_size: int = 300,
) -> list[dict[str, Any]]:
    """Pull each source (default: all four, at their real services) into `raw_records`, incrementally."""
    with stage_logs_to_prefect():
        unknown = sorted(set(sources or ()) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
        results = []
        for source in sources or list(SOURCES):
            cfg = IngestConfig(
                source,
                api_url=(api_urls or {}).get(source),
                path=(paths or {}).get(source),
                params=(params or {}).get(source, {}),
                limit=limit,
                page_size=page_size,
            )
            results.append(ingest_task(home, cfg))
        create_table_artifact(
            key="ingest-summary",
            table=[
                {
                    "source": r["run_id"],
                    "rows_in": r["n_in"],
                    "new": r["n_out"],
                    "unchanged": r["unchanged"],
                    "dropped": sum(r["dropped"].values()),
                }
                for r in results
            ],
            description="Rows per source",
        )
        return results


@task(cache_policy=NONE)
def resolve_task(home: str, backbone_path: str | None) -> dict[str, Any]:
    catalog = open_catalog(home)
    backbones = [stages.load_backbone(catalog, backbone_path)] if backbone_path else None
    return stages.resolve(catalog, backbones)


@task(cache_policy=NONE)
def fetch_task(home: str, cfg: FetchConfig, executor: ExecutorConfig) -> dict[str, Any]:
    return stages.fetch(open_catalog(home), cfg, executor)


@task(cache_policy=NONE)
def dedup_task(home: str, cfg: DedupConfig) -> dict[str, Any]:
    return stages.dedup(open_catalog(home), cfg)


@task(cache_policy=NONE)
def shard_task(
    home: str, cfg: ShardConfig, executor: ExecutorConfig, dedup_run: str, resolve_run: str
) -> dict[str, Any]:
    manifest = stages.shard(open_catalog(home), cfg, executor, dedup_run=dedup_run, resolve_run=resolve_run)
    return stages.manifest_summary(manifest)


@flow(name="curate", log_prints=True)
def curate_flow(
    home: str = "tol-data",
    backbone_path: str | None = None,
    fetch: FetchConfig = FetchConfig(),
    dedup: DedupConfig = DedupConfig(),
    shard: ShardConfig | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
) -> dict[str, Any]:
    """Resolve, fetch, dedup and (when `shard` names a version) shard. The shard step is built from the
    resolve and dedup runs of this flow run, not from whatever is latest when it starts."""
    with stage_logs_to_prefect():
        # The configs were checked (names included) when Prefect built them from the parameters: before any
        # stage runs, not half-way through the flow.
        out = {
            "resolve": resolve_task(home, backbone_path),
            "fetch": fetch_task(home, fetch, executor),
            "dedup": dedup_task(home, dedup),
        }
        if shard is not None:
            out["shard"] = shard_task(home, shard, executor, out["dedup"]["run_id"], out["resolve"]["run_id"])
        create_markdown_artifact(
            key="curate-summary", markdown=_stage_table(out), description="Curation counts"
        )
        return out


def _stage_table(out: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | in | out | dropped by reason |", "|---|---|---|---|"]
    for stage, r in out.items():
        if "n_in" in r:
            lines.append(f"| {stage} | {r['n_in']} | {r['n_out']} | {r.get('dropped', {})} |")
    return "\n".join(lines)


@flow(name="train", log_prints=True)
def train_flow(
    home: str = "tol-data",
    dataset_version: str = "",
    preset: str = "cpu-tiny",
    model: str | None = None,
    replay_path: str | None = None,
    replay_batch_size: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    devices: int = 1,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train from the UI: parameters are the common knobs, `overrides` any other TrainConfig field;
    `devices` > 1 launches torchrun (DDP)."""
    with stage_logs_to_prefect():
        from training.config import load_config

        if dataset_version:
            check_name("version", dataset_version)
        values = {
            k: v
            for k, v in {
                "dataset_version": dataset_version,
                "model": model,
                "replay_path": replay_path,
                "replay_batch_size": replay_batch_size,
                "steps": steps,
                "batch_size": batch_size,
            }.items()
            if v not in (None, "")
        }
        values.update(overrides or {})
        cfg = load_config(preset=preset, overrides=values)
        result = stages.train(open_catalog(home), cfg, devices=devices, progress=False)
        create_markdown_artifact(
            key="train-summary",
            markdown=f"Run `{result['run_id']}`: {result['steps']} steps, final {result['final']}",
            description="Training run",
        )
        return result


SAMPLE_TASKS = [
    "sample-heldout-zero-shot",
    "sample-heldout-few-shot",
    "sample-heldout-linear-probe",
    "sample-heldout-life-stage",
]


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    home: str = "tol-data", model: str = "", tasks: list[str] | None = None, registry: str | None = None
) -> dict[str, dict[str, Any]]:
    """Run registered tasks on a model: a training run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME."""
    with stage_logs_to_prefect():
        chosen = stages.registered_tasks(tasks or SAMPLE_TASKS, registry)
        results = stages.evaluate(open_catalog(home), model, chosen, progress=False)
        by_task = {t.name: r for t, r in zip(chosen, results, strict=True)}
        create_table_artifact(
            key="evaluate-summary",
            table=[
                {"task": t, "metric": k, "value": v}
                for t, r in by_task.items()
                for k, v in r.items()
                if isinstance(v, float)
            ],
        )
        return by_task
