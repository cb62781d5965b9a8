"""Prefect flows over `flows.stages`: `ingest`, `curate`, `train`, `evaluate`.

Each task is one call of a stage function. Flow parameters are the stages' own typed configs (dataclasses),
so the UI's run form shows every setting a stage has (for example `dedup.near_k`), with its default, and
checks it before the run starts."""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.logging.handlers import APILogHandler

from etl.dedup.stage import DedupConfig
from etl.fetch.stage import FetchConfig
from etl.filter.rules import FilterRule
from etl.filter.stage import FilterConfig
from etl.ingest.sources import IngestConfig
from etl.shards.stage import ShardConfig
from evaluation.tasks import compare, heldout_name, heldout_task
from flows import stages
from flows.recipe import SourcePull, load_recipe
from flows.stages import CurateConfig, ExecutorConfig
from flows.trust import form_configs, operator_home
from training.config import PRESETS, load_config
from training.report import loss_curve_png, read_metrics
from warehouse import writers
from warehouse.catalog import Catalog, CatalogBusyError, open_catalog
from warehouse.contracts import MAX_WORKERS, check_bound, check_name, redact
from warehouse.locks import StageBusyError
from warehouse.stage_runs import driven_by
from warehouse.versions import list_versions

log = logging.getLogger("tol.flows")


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


@task(cache_policy=NONE)
def ingest_task(home: str, cfg: IngestConfig) -> dict[str, Any]:
    return stages.ingest(open_catalog(home), cfg)


def ensure_tag_limit(tag: str, slots: int) -> None:
    """A tag concurrency limit of `slots` on `tag`, created when missing (an existing one, perhaps set by an
    operator with `prefect concurrency-limit create`, is left as it is)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(tag)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=tag, concurrency_limit=slots)


def ensure_global_limit(name: str, slots: int) -> None:
    """A global concurrency limit of `slots` called `name`, created when missing (an existing one is kept)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another flow created it meanwhile
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


@flow(name="ingest", log_prints=True)
def ingest_flow(
    home: str | None = None,
    pulls: list[SourcePull] | None = None,
    per_host_limit: int = 1,
    recipe_sha256: str | None = None,
) -> list[dict[str, Any]]:
    """Pull each source query into `raw_records`, incrementally: one task per pull, named for it, with its own
    retries; pulls on different hosts run at once. A pull that fails (after its retries) fails the flow once
    the others have finished; the `ingest-summary` artifact says which failed and why.

    Args:
        home: the catalog home folder (operator-only: under a deployment, the one it was served with).
        pulls: what to pull, one entry per source and query (a recipe's `sources`).
        per_host_limit: pulls that may talk to one host at once (a Prefect tag limit `host:<host>`,
            created when missing; change it with `prefect concurrency-limit`).
        recipe_sha256: the recipe that drives this run (set by `tol recipe run` and the recipe's deployment).
    """
    home = operator_home(home)
    pulls = form_configs(pulls=pulls or [])["pulls"]
    with stage_logs_to_prefect(), driven_by(recipe_sha256):
        if not pulls:
            raise ValueError(
                "nothing to pull: give `pulls` (one per source and query), e.g. from a recipe "
                "(`tol recipe run FILE`, or `tol serve --recipe FILE` for the scheduled ingestion)"
            )
        futures = []
        for pull in pulls:
            tag = f"host:{pull.host}"
            ensure_tag_limit(tag, per_host_limit)
            task_fn = ingest_task.with_options(
                name=f"ingest {pull.name}",
                task_run_name=f"ingest {pull.name} ({pull.ingest.source} from {pull.host})",
                retries=pull.retries,
                retry_delay_seconds=pull.retry_delay_seconds,
                tags=[tag, f"source:{pull.ingest.source}"],
            )
            futures.append((pull, task_fn.submit(home, pull.ingest)))
        rows, failed = [], []
        for pull, future in futures:
            state = future.wait() or future.state
            if state.is_completed():
                r = future.result()
                rows.append(
                    {
                        "pull": pull.name,
                        "source": pull.ingest.source,
                        "status": "succeeded",
                        "rows_in": r["n_in"],
                        "new": r["n_out"],
                        "unchanged": r["unchanged"],
                        "dropped": sum(r["dropped"].values()),
                        "stage_run": r["run_id"],
                        "error": "",
                    }
                )
            else:
                error = _state_error(state)
                failed.append(f"{pull.name}: {error}")
                rows.append(
                    {
                        "pull": pull.name,
                        "source": pull.ingest.source,
                        "status": "failed",
                        "rows_in": 0,
                        "new": 0,
                        "unchanged": 0,
                        "dropped": 0,
                        "stage_run": "",
                        "error": error,
                    }
                )
        create_table_artifact(
            key="ingest-summary",
            table=rows,
            description=f"{len(rows) - len(failed)} of {len(rows)} pulls succeeded"
            + (f"; failed: {'; '.join(failed)}" if failed else ""),
        )
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(rows)} pulls failed: {'; '.join(failed)}")
        return rows


def _state_error(state: Any) -> str:
    """The one-line reason a task run ended in `state` (its exception, else the state's message)."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:
        return f"{type(exc).__name__}: {' '.join(redact(str(exc)).split())[:300]}"
    return redact(state.message or state.name)


def retry_when_busy(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what waiting cures: the catalog or a stage lock held by another command past the wait. Any
    other failure is an answer, not bad luck, and is not retried."""
    try:
        state.result()
    except (CatalogBusyError, StageBusyError):
        return True
    except BaseException:
        return False
    return False


# Every curation stage resumes where it stopped, so a retry after a busy catalog repeats no work.
CURATION_RETRIES = {"retries": 2, "retry_delay_seconds": 30, "retry_condition_fn": retry_when_busy}


@task(cache_policy=NONE, **CURATION_RETRIES)
def curation_step_task(home: str, step: str, cfg: CurateConfig, runs: dict[str, str]) -> dict[str, Any]:
    """One step of `stages.CURATION_STEPS`, by name, as a Prefect task (named for the step in the UI)."""
    chosen = next(s for s in stages.CURATION_STEPS if s.name == step)
    return chosen.run(open_catalog(home), cfg, runs)


@flow(name="curate", log_prints=True)
def curate_flow(
    home: str | None = None,
    backbone_path: str | None = None,
    fetch: FetchConfig = FetchConfig(),
    dedup: DedupConfig = DedupConfig(),
    filter: FilterConfig | None = None,
    shard: ShardConfig | None = None,
    executor: ExecutorConfig = ExecutorConfig(),
    recipe_sha256: str | None = None,
) -> dict[str, Any]:
    """Resolve, fetch, dedup, filter (when `filter` is given) and (when `shard` names a version) shard. The
    shard step is built from the resolve, dedup and filter runs of this flow run, not from whatever is
    latest when it starts.

    Args:
        home: the catalog home folder (operator-only: under a deployment, the one it was served with).
        backbone_path: a DwC-A checklist (zip or folder) to load first; default the latest loaded backbone.
        fetch: download politeness, image rules and hashing (FetchConfig).
        dedup: near-duplicate and leak thresholds, evaluation sets to protect (DedupConfig).
        filter: the content scorers to run on the kept images (FilterConfig); none skips them.
        shard: the dataset version to build and its selection (ShardConfig); none stops after dedup.
        executor: where fetch and shard run: local processes or Spark.
        recipe_sha256: the recipe that drives this run.
    """
    home = operator_home(home)
    forms = form_configs(fetch=fetch, dedup=dedup, filter=filter, shard=shard, executor=executor)
    fetch, dedup, filter, shard, executor = (
        forms[k] for k in ("fetch", "dedup", "filter", "shard", "executor")
    )
    with stage_logs_to_prefect(), driven_by(recipe_sha256):
        # The configs were checked (names included) when Prefect built them from the parameters: before any
        # stage runs, not half-way through the flow.
        cfg = CurateConfig(backbone_path, fetch, dedup, filter, shard, executor)

        def run_step(step: stages.CurationStep, cfg: CurateConfig, runs: dict[str, str]) -> dict[str, Any]:
            task_fn = curation_step_task.with_options(name=f"{step.name}_task", task_run_name=step.name)
            return task_fn(home, step.name, cfg, runs)

        out = stages.curate(open_catalog(home), cfg, run_step)
        if "shard" in out:
            refresh_train_choices(open_catalog(home))
        create_markdown_artifact(
            key="curate-summary", markdown=_stage_table(out), description="Curation counts"
        )
        return out


def _stage_table(out: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | in | out | dropped by reason |", "|---|---|---|---|"]
    for stage, r in out.items():
        if "n_in" in r:
            lines.append(f"| {stage} | {r['n_in']} | {r['n_out']} | {r.get('dropped', {})} |")
    filters = out.get("shard", {}).get("filters") or {}
    if filters.get("rules"):
        lines += [
            "",
            f"Filter rules of version {out['shard']['version']} (scores of {filters['filter_run']}):",
            "",
        ]
        lines += ["| scorer | rule | removed | by image type |", "|---|---|---|---|"]
        for rule in filters["rules"]:
            r = filters["removed"][rule["scorer"]]
            text = FilterRule(**rule).as_text()
            lines.append(f"| {rule['scorer']} | `{text}` | {r['removed']} | {r['by_image_type'] or '-'} |")
    return "\n".join(lines)


LATEST = "latest"
TRAINING_LIMIT = "tol-training"  # the global concurrency limit every training run takes one slot of
PresetName = Literal[tuple(PRESETS)]  # the UI offers the presets as choices


def latest_version(catalog: Catalog) -> str:
    versions = list_versions(catalog)
    if not versions:
        raise LookupError(
            "no dataset version exists yet: build one first (the curate flow with a `shard` version, "
            "`tol shard --version NAME`, or `tol recipe run FILE`)"
        )
    return versions[-1]["version"]


TRAIN_DEPLOYMENT = "train/train"


def version_choices(catalog: Catalog) -> list[str]:
    """What the train form offers: `latest` (the newest when the run starts), then every version, newest first."""
    return list(dict.fromkeys([LATEST, *(v["version"] for v in reversed(list_versions(catalog)))]))


def refresh_train_choices(catalog: Catalog, extra: tuple[str, ...] = ()) -> list[str] | None:
    """Make the train deployment's `dataset_version` choices the versions that exist now (and `extra`, a
    recipe's planned version), so a version built after the server started is offered in the form, not only
    in its JSON view. Called after every build of the curate flow and at the start of each training run; a
    server without the deployment, or out of reach, is left alone (logged), never a failed run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    choices = list(dict.fromkeys([*version_choices(catalog), *extra]))
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
            schema = dict(deployment.parameter_openapi_schema or {})
            prop = (schema.get("properties") or {}).get("dataset_version")
            if prop is None or prop.get("enum") == choices:
                return choices
            prop["enum"] = choices
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
    except ObjectNotFound:
        return None
    except Exception as exc:  # the form's list is a convenience; the flow checks the version exists
        log.warning("the train form's version choices were not refreshed: %s", exc)
        return None
    log.info("train form: dataset_version choices now %s", ", ".join(choices))
    return choices


def train_config(catalog: Catalog, preset: str, version: str, values: dict[str, Any]) -> Any:
    """The TrainConfig a train run uses: `version` (or the latest for `latest`), the preset, then `values`
    (`training.config.load_config`: a preset's replay with no replay set trains without replay, and says so)."""
    name = latest_version(catalog) if version in ("", LATEST) else check_name("version", version)
    known = [v["version"] for v in list_versions(catalog)]
    if name not in known:
        raise LookupError(f"dataset version {name!r} does not exist; built: {', '.join(known) or 'none'}")
    return load_config(preset=preset, overrides={**values, "dataset_version": name})


@flow(name="train", log_prints=True)
def train_flow(
    home: str | None = None,
    dataset_version: str = LATEST,
    preset: PresetName = "cpu-tiny",
    model: str | None = None,
    replay_path: str | None = None,
    replay_batch_size: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    devices: int = 1,
    overrides: dict[str, Any] | None = None,
    evaluate_tasks: list[str] | None = None,
    registry: str | None = None,
    training_slots: int = 1,
    recipe_sha256: str | None = None,
) -> dict[str, Any]:
    """Train BioCLIP 2 on a dataset version, then evaluate the trained model.

    Progress (step, loss, samples/s, ETA) is logged every `log_every` steps and kept in the `train-progress`
    artifact; at the end come the `train-metrics` table, the `train-loss-curve` image and the evaluation
    subflow's `evaluate-summary` table (this run beside the previous one).

    Args:
        home: the catalog home folder (operator-only: under a deployment, the one it was served with).
        dataset_version: the version to train on; `latest` takes the newest built.
        preset: the base config (cpu-tiny: a small ViT for CPUs; gpu-paper: the paper's ViT-L/14 recipe).
        model: an open_clip architecture name instead of the preset's model.
        replay_path: a folder of replay WebDataset shards (jpg + txt); without one, replay is off.
        replay_batch_size: replay pairs per step (0 turns replay off).
        steps: optimizer steps (default: the preset's).
        batch_size: biology images per step and device (default: the preset's).
        devices: processes (GPUs) for data-parallel training through torchrun.
        overrides: any other TrainConfig key, e.g. {"lr": 0.0005, "log_every": 10}.
        evaluate_tasks: registered evaluation tasks to run on the trained model (none: zero-shot on the
            version's own held-out split, at species and each rank).
        registry: an extra task registry YAML file for `evaluate_tasks`.
        training_slots: runs that may train at once on this server (the global concurrency limit
            `tol-training`, created with this many slots when missing; change it with `prefect gcl update`).
        recipe_sha256: the recipe that drives this run (set by `tol recipe run` and `tol serve --recipe`).
    """
    from prefect.concurrency.sync import concurrency

    home = operator_home(home)
    check_bound("devices", devices, MAX_WORKERS, 1)
    check_bound("training_slots", training_slots, MAX_WORKERS, 1)
    with stage_logs_to_prefect(), driven_by(recipe_sha256):
        if dataset_version not in ("", LATEST):
            check_name("version", dataset_version)  # before the home is opened (and perhaps created)
        catalog = open_catalog(home)
        refresh_train_choices(catalog)
        values = {
            k: v
            for k, v in {
                "model": model,
                "replay_path": replay_path,
                "replay_batch_size": replay_batch_size,
                "steps": steps,
                "batch_size": batch_size,
            }.items()
            if v not in (None, "")
        }
        values.update(overrides or {})
        cfg = train_config(catalog, preset, dataset_version, values)
        ensure_global_limit(TRAINING_LIMIT, training_slots)
        log.info("waiting for a training slot (global concurrency limit %s)", TRAINING_LIMIT)
        with concurrency(TRAINING_LIMIT, occupy=1, strict=True):
            log.info("training %d steps on %s (preset %s)", cfg.steps, cfg.dataset_version, preset)
            tracker = _ProgressArtifact(cfg.steps)
            result = stages.train(
                catalog, cfg, devices=devices, progress=sys.stderr.isatty(), on_progress=tracker.update
            )
            tracker.done(result)
        _training_artifacts(catalog, result)
        if evaluate_tasks:
            result["evaluation"] = evaluate_flow(
                home,
                model=result["run_id"],
                tasks=list(evaluate_tasks),
                registry=registry,
                recipe_sha256=recipe_sha256,
            )
        else:
            # Every run gets a number: zero-shot on the version's own held-out split (species and each
            # rank), beside the previous run scored on it.
            log.info("no evaluate_tasks given: evaluating on %s's held-out split", cfg.dataset_version)
            result["evaluation"] = evaluate_flow(
                home, model=result["run_id"], heldout_version=cfg.dataset_version, recipe_sha256=recipe_sha256
            )
        return result


class _ProgressArtifact:
    """The `train-progress` artifact: percent done, its description the latest progress line."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.id = create_progress_artifact(0.0, key="train-progress", description=f"0 of {steps} steps")

    def update(self, rec: dict[str, Any]) -> None:
        from training.loop import format_eta

        update_progress_artifact(
            self.id,
            100.0 * rec["step"] / rec["steps"],
            description=f"step {rec['step']} of {rec['steps']}: loss {rec['loss_bio']:.3f}, "
            f"{rec['samples_per_s']:.1f} samples/s, ETA {format_eta(rec['eta_s'])}",
        )

    def done(self, result: dict[str, Any]) -> None:
        update_progress_artifact(
            self.id, 100.0, description=f"{result['steps']} steps done in {result['seconds']:.0f} s"
        )


def _training_artifacts(catalog: Catalog, result: dict[str, Any]) -> None:
    """The metrics table and the loss curve (an inline PNG the UI shows) of a finished run."""
    final = result.get("final", {})
    rows = [
        {"metric": "run", "value": result["run_id"]},
        {"metric": "steps", "value": result["steps"]},
        {"metric": "samples seen", "value": result["samples_seen"]},
        {"metric": "seconds", "value": round(result["seconds"], 1)},
        *({"metric": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in final.items()),
        {"metric": "export", "value": result["export_path"]},
    ]
    create_table_artifact(key="train-metrics", table=rows, description=f"Training run {result['run_id']}")
    metrics = read_metrics(catalog.runs / result["run_id"] / "metrics.jsonl")
    if metrics:
        png = loss_curve_png(metrics, f"{result['run_id']}: loss by step")
        (catalog.runs / result["run_id"] / "loss_curve.png").write_bytes(png)
        create_markdown_artifact(
            key="train-loss-curve",
            markdown=f"![loss curve of {result['run_id']}](data:image/png;base64,{base64.b64encode(png).decode()})",
            description=f"Loss by step, {result['run_id']} (also runs/{result['run_id']}/loss_curve.png)",
        )


SAMPLE_TASKS = [
    "sample-heldout-zero-shot",
    "sample-heldout-few-shot",
    "sample-heldout-linear-probe",
    "sample-heldout-life-stage",
]


def previous_training_run(catalog: Catalog, run_id: str, tasks: list[str]) -> str | None:
    """The latest succeeded training run before `run_id` with results on any of `tasks`."""
    rows = catalog.query_arrow(
        """SELECT t.run_id FROM training_runs t
           WHERE t.status = 'succeeded' AND t.run_id <> ?
             AND t.started_at < coalesce((SELECT started_at FROM training_runs WHERE run_id = ?), now())
             AND EXISTS (SELECT 1 FROM eval_results e WHERE e.run_id = t.run_id AND list_contains(?, e.task))
           ORDER BY t.started_at DESC LIMIT 1""",
        [run_id, run_id, tasks],
    ).to_pylist()
    return rows[0]["run_id"] if rows else None


def _chosen_tasks(
    catalog: Catalog, tasks: list[str] | None, registry: str | None, heldout_version: str | None
) -> list[Any]:
    """Registered tasks by name (the sample world's four when neither they nor a held-out version is
    given), then the held-out split of `heldout_version`."""
    chosen = stages.registered_tasks(tasks, registry) if tasks else []
    if heldout_version:
        chosen.append(heldout_task(catalog, heldout_version))
    return chosen or stages.registered_tasks(SAMPLE_TASKS, registry)


@task(cache_policy=NONE, **CURATION_RETRIES)
def evaluate_task(
    home: str, model: str, tasks: list[str], registry: str | None, heldout_version: str | None = None
) -> list[dict[str, Any]]:
    catalog = open_catalog(home)
    chosen = _chosen_tasks(catalog, tasks, registry, heldout_version)
    return stages.evaluate(catalog, model, chosen, progress=False)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    home: str | None = None,
    model: str = "",
    tasks: list[str] | None = None,
    registry: str | None = None,
    compare_with: str | None = None,
    heldout_version: str | None = None,
    recipe_sha256: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run registered tasks on a model; the `evaluate-summary` table puts it beside `compare_with` (for a
    training run, by default the previous run evaluated on these tasks).

    Args:
        home: the catalog home folder (operator-only: under a deployment, the one it was served with).
        model: a training run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME.
        tasks: registered task names (evaluation/tasks.yaml); default the sample world's four.
        registry: an extra task registry YAML file.
        compare_with: a run id or model whose stored results stand beside this one's.
        heldout_version: also zero-shot on this dataset version's own held-out (val) split, at species
            and at each rank (what a training run without evaluation tasks is scored on).
        recipe_sha256: the recipe that drives this run.
    """
    home = operator_home(home)
    if heldout_version:
        check_name("version", heldout_version)
    with stage_logs_to_prefect(), driven_by(recipe_sha256):
        catalog = open_catalog(home)
        chosen = _chosen_tasks(catalog, tasks, registry, heldout_version)
        registered = [
            t.name for t in chosen if not (heldout_version and t.name == heldout_name(heldout_version))
        ]
        results = evaluate_task(home, model, registered, registry, heldout_version)
        by_task = {t.name: r for t, r in zip(chosen, results, strict=True)}
        other = compare_with or previous_training_run(catalog, model, [t.name for t in chosen])
        before: dict[tuple[str, str], float] = {}
        if other:
            for row in compare(catalog, [other]):
                if row.get(other) is not None:
                    before[(row["task"], row["metric"])] = row[other]
        table = []
        for t, r in by_task.items():
            for k, v in r.items():
                if isinstance(v, float):
                    prev = before.get((t, k))
                    table.append(
                        {
                            "task": t,
                            "metric": k,
                            "this run": round(v, 4),
                            f"previous ({other or 'none'})": None if prev is None else round(prev, 4),
                            "change": None if prev is None else round(v - prev, 4),
                        }
                    )
        create_table_artifact(
            key="evaluate-summary",
            table=table,
            description=f"{model} on {len(chosen)} tasks" + (f", beside {other}" if other else ""),
        )
        _plots_artifact(model, by_task)
        return by_task


PLOTS_ARTIFACT_BYTES = 4_000_000  # PNG bytes inlined in one artifact; further plots are listed by path


def _plots_artifact(model: str, by_task: dict[str, dict[str, Any]]) -> None:
    """The tasks' plots (PCA and t-SNE maps, the 3-D view) as images the UI shows: `evaluate-plots`."""
    paths = [(t, Path(p)) for t, r in by_task.items() for p in r.get("plots") or () if p.endswith(".png")]
    if not paths:
        return
    parts, budget = [], PLOTS_ARTIFACT_BYTES
    for task_name, path in paths:
        data = path.read_bytes()
        if len(data) > budget:
            parts.append(f"**{task_name}: {path.stem}**: {path} (not inlined: the artifact is full)")
            continue
        budget -= len(data)
        parts.append(
            f"**{task_name}: {path.stem}**\n\n![{path.stem}](data:image/png;base64,{base64.b64encode(data).decode()})"
        )
    create_markdown_artifact(
        key="evaluate-plots", markdown="\n\n".join(parts), description=f"Embedding plots of {model}"
    )


RecipeStep = Literal["ingest", "curate", "train"]


@flow(name="recipe", log_prints=True)
def recipe_flow(
    home: str | None = None,
    recipe_path: str = "",
    variables: dict[str, str] | None = None,
    until: RecipeStep = "train",
    train_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a corpus recipe: ingest its sources, curate and build its version, train and evaluate, stopping
    after `until`. The recipe's text and sha256 are stored (`recipes`) and every stage run it drives
    carries the hash (`stage_runs.recipe_sha256`).

    Args:
        home: the catalog home folder (operator-only: under a deployment, the one it was served with).
        recipe_path: the recipe YAML file.
        variables: values for the recipe's `${NAME}` variables (the environment fills the others).
        until: the last step to run: ingest, curate, or train (which includes the evaluation).
        train_overrides: TrainConfig keys that win over the recipe's `train` section, e.g. {"steps": 80}.
    """
    home = operator_home(home)
    recipe = load_recipe(recipe_path, variables)
    spec, sha = recipe.spec, recipe.sha256
    writers.record_recipe(open_catalog(home), sha, spec.name, recipe.path, recipe.text)
    log.info("recipe %s (sha256 %s): %d pulls, until %s", spec.name, sha[:12], len(spec.sources), until)
    out: dict[str, Any] = {"recipe": spec.name, "recipe_sha256": sha}
    if spec.sources:
        out["ingest"] = ingest_flow(home, pulls=list(spec.sources), recipe_sha256=sha)
    else:
        log.info("the recipe has no sources: nothing ingested, curating what the catalog holds")
    if until == "ingest":
        return out
    c = spec.curate
    out["curate"] = curate_flow(
        home,
        backbone_path=c.backbone_path,
        fetch=c.fetch,
        dedup=c.dedup,
        filter=c.filter,
        shard=c.shard,
        executor=c.executor,
        recipe_sha256=sha,
    )
    if until == "curate":
        return out
    params = recipe.train_parameters()
    params["overrides"] = {**params["overrides"], **(train_overrides or {})}
    out["train"] = train_flow(home, **params, recipe_sha256=sha)
    return out
