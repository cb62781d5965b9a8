"""The one wiring of the pipeline: each stage as a function of a catalog and its typed config.

The command line (`tol`), the Prefect flows, the tests and the benchmarks all call these functions, so a
setting added to a stage's config reaches every entry point through the config object, not through a
parameter list repeated in four places. Inputs that default to "the latest" (backbone, resolve run, dedup
run) are chosen here, once, passed to the stage as arguments, and recorded by it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.compact import run_compaction
from etl.dedup.stage import DedupConfig, run_dedup
from etl.executors import ExecutorConfig
from etl.fetch.stage import FetchConfig, run_fetch
from etl.filter.stage import FilterConfig, latest_filter_run, run_filter
from etl.ingest.sources import IngestConfig
from etl.ingest.stage import run_ingest
from etl.shards.stage import ShardConfig, ShardInputs, build_version
from evaluation.suite import run_suite
from evaluation.tasks import load_registry, run_task
from taxonomy import backbone
from taxonomy.backbone import latest_backbone
from taxonomy.resolve import run_resolve
from warehouse.catalog import Catalog
from warehouse.compaction import CompactionConfig, compaction_due
from warehouse.stage_runs import run_config, succeeded_run

log = logging.getLogger("tol.stages")


@dataclass(frozen=True)
class ResolveConfig:
    """Which backbones the records are resolved against, in priority order (empty: the latest loaded), and
    whether every usable record is resolved again rather than only those new or changed since the last run."""

    backbones: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "a backbone version; repeat for a priority order (first wins; default the latest loaded)",
            "flag": "--backbone",
        },
    )
    full: bool = field(
        default=False,
        metadata={
            "help": "resolve every usable record again (default: only records new or changed since the last "
            "run with these backbones, the rest carried from it)"
        },
    )


def ingest(catalog: Catalog, cfg: IngestConfig, *, progress: bool = False) -> dict[str, Any]:
    return run_ingest(catalog, cfg, progress=progress)


def load_backbone(catalog: Catalog, path: str | Path, *, common_name_fallback: bool = False) -> str:
    return backbone.load_backbone(catalog, path, common_name_fallback=common_name_fallback)


def resolve(
    catalog: Catalog, backbones: Sequence[str] | None = None, *, full: bool = False
) -> dict[str, Any]:
    """Resolve every usable record against `backbones` (priority order), by default the latest loaded;
    incremental unless `full` (see `taxonomy.resolve.run_resolve`)."""
    versions = list(backbones) if backbones else [latest_backbone(catalog)]
    return run_resolve(catalog, versions, full=full)


def fetch(
    catalog: Catalog,
    cfg: FetchConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Fetch what is not fetched yet, then compact the image table's parts (one per work unit) when enough
    small ones have gathered (`compact`)."""
    ex = executor or ExecutorConfig()
    summary = run_fetch(catalog, cfg or FetchConfig(), executor=ex, progress=progress)
    images = CompactionConfig(tables=("images_history",))
    if compaction_due(catalog, images):
        compact(catalog, images, ex)
    return summary


def compact(
    catalog: Catalog, cfg: CompactionConfig | None = None, executor: ExecutorConfig | None = None
) -> dict[str, Any]:
    """Merge small lake parts into parts of bounded size, each merge a work unit (see `etl.compact`)."""
    return run_compaction(catalog, cfg or CompactionConfig(), executor=executor or ExecutorConfig())


def dedup(catalog: Catalog, cfg: DedupConfig | None = None, *, full: bool = False) -> dict[str, Any]:
    return run_dedup(catalog, cfg or DedupConfig(), full=full)


def shard(
    catalog: Catalog,
    cfg: ShardConfig,
    executor: ExecutorConfig | None = None,
    *,
    dedup_run: str | None = None,
    resolve_run: str | None = None,
    filter_run: str | None = None,
) -> dict[str, Any]:
    """Build the dataset version `cfg.version` from `dedup_run`'s kept images named by `resolve_run`
    (each by default the latest succeeded run); with filter rules, `filter_run` (by default the latest that
    scored that dedup run's images with the rules' scorers) vouches for the scores. Returns its manifest."""
    resolve_run = succeeded_run(catalog, "resolve", resolve_run)
    dedup_run = succeeded_run(catalog, "dedup", dedup_run)
    if cfg.filters and filter_run is None:
        filter_run = latest_filter_run(catalog, dedup_run, {r.scorer for r in cfg.filters})
    elif filter_run is not None:
        filter_run = succeeded_run(catalog, "filter", filter_run)
    inputs = ShardInputs(
        dedup_run=dedup_run,
        resolve_run=resolve_run,
        backbone_versions=tuple(run_config(catalog, resolve_run).get("backbone_versions") or ()),
        filter_run=filter_run if cfg.filters else None,
    )
    log.info("shard %s from dedup %s, resolve %s", cfg.version, inputs.dedup_run, inputs.resolve_run)
    return build_version(catalog, cfg, inputs, executor=executor or ExecutorConfig())


def filter_images(
    catalog: Catalog,
    cfg: FilterConfig | None = None,
    executor: ExecutorConfig | None = None,
    *,
    dedup_run: str | None = None,
) -> dict[str, Any]:
    """Score the images `dedup_run` (default: the latest succeeded) kept with the content scorers."""
    dedup_run = succeeded_run(catalog, "dedup", dedup_run)
    return run_filter(catalog, cfg or FilterConfig(), dedup_run, executor=executor or ExecutorConfig())


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest without its per-shard list: what a person reads after a build."""
    return {k: v for k, v in manifest.items() if k != "shards"} | {"n_shards": len(manifest["shards"])}


# --- the stage table -------------------------------------------------------------------------------------------
# Every stage in one shape: `run(catalog, cfg, inputs, executor, progress=...) -> summary`. `inputs` holds the
# runs it reads (`dedup_run`: None is the latest succeeded) and, for stages that work incrementally, `full`.


@dataclass(frozen=True)
class Stage:
    """A stage as the command line, the curate flow and the recipe see it: its config class (whose fields
    carry the flags), the runs it reads, whether it takes an executor, and whether it has a `--full` mode."""

    name: str
    help: str
    config: type
    run: Callable[..., dict[str, Any]]
    inputs: tuple[str, ...] = ()
    command: str = ""  # its command line words when not its name (`filter run`)
    executor: bool = False
    full: str | None = None  # the --full switch's help, for a stage that otherwise works incrementally


# What each named input is, as its flag's help says.
INPUTS = {
    "dedup_run": "the dedup run whose kept images to use (default: the latest)",
    "resolve_run": "the resolve run whose names label them (default: the latest)",
    "filter_run": "the filter run whose scores the rules read (default: the latest that covers them)",
}


def _ingest(catalog: Catalog, cfg: IngestConfig, inputs, executor, *, progress: bool = False):
    return ingest(catalog, cfg, progress=progress)


def _resolve(catalog: Catalog, cfg: ResolveConfig, inputs, executor, *, progress: bool = False):
    return resolve(catalog, cfg.backbones or None, full=cfg.full)


def _fetch(catalog: Catalog, cfg: FetchConfig, inputs, executor, *, progress: bool = False):
    return fetch(catalog, cfg, executor, progress=progress)


def _compact(catalog: Catalog, cfg: CompactionConfig, inputs, executor, *, progress: bool = False):
    return compact(catalog, cfg, executor)


def _dedup(catalog: Catalog, cfg: DedupConfig, inputs, executor, *, progress: bool = False):
    for name, path in cfg.eval_sets.items():
        if not Path(path).exists():
            raise FileNotFoundError(f"--eval {name}: {path} does not exist (a folder or a .tar shard)")
    return dedup(catalog, cfg, full=bool(inputs.get("full")))


def _filter(catalog: Catalog, cfg: FilterConfig, inputs, executor, *, progress: bool = False):
    return filter_images(catalog, cfg, executor, dedup_run=inputs.get("dedup_run"))


def _shard(catalog: Catalog, cfg: ShardConfig, inputs, executor, *, progress: bool = False):
    runs = {k: inputs.get(k) for k in ("dedup_run", "resolve_run", "filter_run")}
    return manifest_summary(shard(catalog, cfg, executor, **runs))


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "pull a source into raw_records", IngestConfig, _ingest),
    Stage("resolve", "resolve all usable records against the latest backbone", ResolveConfig, _resolve),
    Stage("fetch", "download, resize and hash images", FetchConfig, _fetch, executor=True),
    Stage(
        "compact",
        "merge small lake parts into parts of bounded size (fetch does it for the image table)",
        CompactionConfig,
        _compact,
        executor=True,
    ),
    Stage(
        "dedup",
        "exact, near and eval-leak decisions (`tol dedup query IMAGE...`: look images up)",
        DedupConfig,
        _dedup,
        full="write every decision again (default: only decisions that differ from the last run's)",
    ),
    Stage(
        "filter",
        "score the images the latest (or --dedup-run) dedup run kept",
        FilterConfig,
        _filter,
        inputs=("dedup_run",),
        executor=True,
        command="filter run",
    ),
    Stage(
        "shard",
        "write a dataset version as WebDataset shards",
        ShardConfig,
        _shard,
        inputs=("dedup_run", "resolve_run", "filter_run"),
        executor=True,
    ),
)
STAGE = {st.name: st for st in STAGES}


@dataclass(frozen=True)
class CurateConfig:
    """Resolve, fetch, dedup, filter (when `filter` is given) and shard (when `shard` is), with every stage's
    full config."""

    backbone_path: str | None = None  # load this checklist first (a no-op when it is loaded already)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    filter: FilterConfig | None = None  # content scores after dedup (needed by the shard's filter rules)
    shard: ShardConfig | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def _stage_step(name: str, config: Callable[[CurateConfig], Any]):
    """A curation step that runs stage `name` with its part of the CurateConfig; its inputs are the run ids
    of the steps before it (`dedup_run` is the dedup step's run)."""

    def run(catalog: Catalog, cfg: CurateConfig, runs: dict[str, str]) -> dict[str, Any]:
        st = STAGE[name]
        inputs = {i: runs.get(i.removesuffix("_run")) for i in st.inputs}
        return st.run(catalog, config(cfg), inputs, cfg.executor if st.executor else None)

    return run


def _resolve_step(catalog: Catalog, cfg: CurateConfig, runs: dict[str, str]) -> dict[str, Any]:
    backbones = (load_backbone(catalog, cfg.backbone_path),) if cfg.backbone_path else ()
    return STAGE["resolve"].run(catalog, ResolveConfig(backbones=backbones), {}, None)


@dataclass(frozen=True)
class CurationStep:
    """One step of curation: its name (a stage's, the summary's key, the Prefect task's), how it runs from
    the whole `CurateConfig` and the run ids of the steps before it (its inputs, passed on and recorded),
    and whether this config asks for it."""

    name: str
    run: Callable[[Catalog, CurateConfig, dict[str, str]], dict[str, Any]]
    wanted: Callable[[CurateConfig], bool] = lambda cfg: True


# The one statement of the curation order: `curate`, the curate flow and the recipe all follow it; each step
# runs its entry of STAGES.
CURATION_STEPS: tuple[CurationStep, ...] = (
    CurationStep("resolve", _resolve_step),
    CurationStep("fetch", _stage_step("fetch", lambda cfg: cfg.fetch)),
    CurationStep("dedup", _stage_step("dedup", lambda cfg: cfg.dedup)),
    CurationStep("filter", _stage_step("filter", lambda cfg: cfg.filter), lambda cfg: cfg.filter is not None),
    CurationStep("shard", _stage_step("shard", lambda cfg: cfg.shard), lambda cfg: cfg.shard is not None),
)

StepRunner = Callable[[CurationStep, CurateConfig, dict[str, str]], dict[str, Any]]


def curate(
    catalog: Catalog, cfg: CurateConfig, run_step: StepRunner | None = None
) -> dict[str, dict[str, Any]]:
    """The curation steps in `CURATION_STEPS` order, those `cfg` asks for; each step's summary by name (the
    shard entry is the manifest summary). `run_step` runs one step (the curate flow runs each as a Prefect
    task); by default it is called here."""
    run_step = run_step or (lambda step, cfg, runs: step.run(catalog, cfg, runs))
    out: dict[str, dict[str, Any]] = {}
    runs: dict[str, str] = {}
    for step in CURATION_STEPS:
        if step.wanted(cfg):
            out[step.name] = run_step(step, cfg, dict(runs))
            if out[step.name].get("run_id"):
                runs[step.name] = out[step.name]["run_id"]
    return out


def train(
    catalog: Catalog,
    cfg: Any,
    *,
    devices: int = 1,
    progress: bool = True,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) `cfg` (a `training.config.TrainConfig`); `devices` > 1 runs torchrun (DDP), whose
    progress lines come from its rank 0 process (`on_progress` is called in this process only)."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, not {devices}")
    if devices > 1:
        from training.distributed import launch

        return launch(catalog.home, cfg.to_dict(), devices)  # one process per device
    from training.loop import train as run

    return run(catalog, cfg, progress=progress, on_progress=on_progress)


def registered_tasks(names: Sequence[str], registry: str | None = None) -> list[Any]:
    """The registered evaluation tasks called `names`; an unknown name is an error listing the known ones."""
    known = load_registry(registry)
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        missing = f"unknown task(s) {', '.join(unknown)}; " if unknown else "no task given; "
        raise ValueError(f"{missing}registered: {', '.join(sorted(known))}")
    return [known[n] for n in names]


def evaluate(
    catalog: Catalog,
    model: str,
    tasks: Sequence[Any],
    *,
    json_out: str | Path | None = None,
    progress: bool = True,
    data_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run `tasks` (evaluation.tasks.Task) on `model`: a training run id, an export folder, `local-dir:PATH`
    or `hf-hub:ORG/NAME`. With one task, `json_out` receives its scores; with several, the list."""
    if not model:
        raise ValueError(
            "a model is required (a run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME)"
        )
    single = json_out if len(tasks) == 1 else None
    results = [
        run_task(catalog, model, t, json_out=single, progress=progress, data_root=data_root) for t in tasks
    ]
    if json_out and len(tasks) > 1:
        Path(json_out).write_text(json.dumps(results, indent=1, default=str))
    return results


def evaluate_with(catalog: Catalog, opts: Any) -> list[dict[str, Any]]:
    """`tol evaluate` without --suite: the ad-hoc `--data` task, or the registered `--task`s, on `opts.model`
    (an `evaluation.tasks.EvaluateOptions`)."""
    if opts.data:
        tasks = [opts.adhoc()]
    elif opts.task:
        tasks = registered_tasks(opts.task, opts.registry)
    else:
        raise ValueError("give --data DIR or --task NAME (see `tol evaluate --task ?` for the names)")
    return evaluate(catalog, opts.model, tasks, json_out=opts.json, data_root=opts.data_root)


def evaluate_suite(catalog: Catalog, opts: Any) -> dict[str, Any]:
    """`tol evaluate --suite`: every benchmark of the suite found under `opts.data_root`; the summary is
    also written to `opts.json` when given."""
    if not opts.model:
        raise ValueError(
            "--model is required (a run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME)"
        )
    if not opts.data_root:
        raise ValueError("--suite needs --data-root DIR (the folder holding nabirds/, newt/, ...)")
    summary = run_suite(catalog, opts.model, opts.data_root, opts.suite)
    if opts.json:
        Path(opts.json).write_text(json.dumps(summary, indent=1, default=str))
    return summary
