"""Prefect flows over the stage functions: `ingest`, `curate`, `train`, `evaluate`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from warehouse.catalog import open_catalog
from warehouse.contracts import check_name


@task(cache_policy=NONE, retries=2, retry_delay_seconds=10)
def ingest_task(
    home: str, source: str, api_url: str | None, path: str | None, params: dict[str, str], limit: int | None
) -> dict[str, Any]:
    from etl.ingest import run_ingest
    from etl.sources import IngestConfig

    return run_ingest(
        open_catalog(home), IngestConfig(source, api_url=api_url, path=path, params=params, limit=limit)
    )


@flow(name="ingest", log_prints=True)
def ingest_flow(
    home: str = "tol-data",
    sources: list[str] | None = None,
    api_urls: dict[str, str] | None = None,
    paths: dict[str, str] | None = None,
    params: dict[str, dict[str, str]] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Pull each source (default: all four, at their real services) into `raw_records`, incrementally."""
    from warehouse.contracts import SOURCES

    results = []
    for source in sources or list(SOURCES):
        results.append(
            ingest_task(
                home,
                source,
                (api_urls or {}).get(source),
                (paths or {}).get(source),
                (params or {}).get(source, {}),
                limit,
            )
        )
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
    from taxonomy.backbone import load_backbone
    from taxonomy.resolve import run_resolve

    catalog = open_catalog(home)
    version = load_backbone(catalog, backbone_path) if backbone_path else None
    return run_resolve(catalog, version)


@task(cache_policy=NONE)
def fetch_task(home: str, executor: str, workers: int, allow_private_hosts: bool) -> dict[str, Any]:
    from etl.fetch import FetchConfig, run_fetch

    return run_fetch(
        open_catalog(home),
        FetchConfig(allow_private_hosts=allow_private_hosts),
        executor=executor,
        workers=workers,
    )


@task(cache_policy=NONE)
def dedup_task(home: str, eval_sets: dict[str, str]) -> dict[str, Any]:
    from etl.dedup import DedupConfig, run_dedup

    return run_dedup(open_catalog(home), DedupConfig(eval_sets=eval_sets))


@task(cache_policy=NONE)
def shard_task(
    home: str, version: str, where: str | None, samples_per_shard: int, val_fraction: float, overwrite: bool
) -> dict[str, Any]:
    from etl.shards import ShardConfig, build_version

    manifest = build_version(
        open_catalog(home),
        ShardConfig(
            version,
            where=where,
            samples_per_shard=samples_per_shard,
            val_fraction=val_fraction,
            overwrite=overwrite,
        ),
    )
    return {k: v for k, v in manifest.items() if k != "shards"} | {"n_shards": len(manifest["shards"])}


@flow(name="curate", log_prints=True)
def curate_flow(
    home: str = "tol-data",
    backbone_path: str | None = None,
    executor: str = "local",
    workers: int = 2,
    allow_private_hosts: bool = False,
    eval_sets: dict[str, str] | None = None,
    version: str | None = None,
    where: str | None = None,
    samples_per_shard: int = 10_000,
    val_fraction: float = 0.05,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Resolve, fetch, dedup and (when `version` is given) shard."""
    # Names are checked before any stage runs, not half-way through the flow.
    if version is not None:
        check_name("version", version)
    for name in eval_sets or {}:
        check_name("evaluation set", name)
    out = {
        "resolve": resolve_task(home, backbone_path),
        "fetch": fetch_task(home, executor, workers, allow_private_hosts),
        "dedup": dedup_task(home, eval_sets or {}),
    }
    if version:
        out["shard"] = shard_task(home, version, where, samples_per_shard, val_fraction, overwrite)
    create_markdown_artifact(key="curate-summary", markdown=_stage_table(out), description="Curation counts")
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
    """Train from the UI: parameters are the common knobs; `devices` > 1 launches torchrun (DDP)."""
    from training.config import load_config
    from training.loop import train

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
    catalog = open_catalog(home)
    if devices > 1:
        from training.distributed import launch

        result = launch(catalog.home, cfg.to_dict(), devices)  # torchrun, one process per device
    else:
        result = train(catalog, cfg, progress=False)
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
    """Run registered tasks on a model (a training run id, an export folder, or any open_clip name)."""
    from evaluation.tasks import load_registry, run_task

    catalog = open_catalog(home)
    known = load_registry(registry)
    results = {}
    for name in tasks or SAMPLE_TASKS:
        if name not in known:
            raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(known))}")
        results[name] = run_task(catalog, model, known[name], progress=False)
    create_table_artifact(
        key="evaluate-summary",
        table=[
            {"task": t, "metric": k, "value": v}
            for t, r in results.items()
            for k, v in r.items()
            if isinstance(v, float)
        ],
    )
    return results
