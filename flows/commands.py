"""The commands that are not stages, in one table beside `stages.STAGES`: each is a typed config (whose fields
carry the flags, their help and their defaults, as a stage's config does) and a function of the catalog home
and that config. `flows.cli` builds every command's parser from the two tables and declares no argument.

A default is written once: in the field, taken from the function doing the work where it has one
(`default_of(taxonomy_diff, "sample")`)."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etl.dedup.query import query_images, versions_holding
from etl.filter.scorers import MuseumConfig
from etl.filter.support import build_support
from etl.shards.card import render_card
from etl.shards.takedowns import affected_versions, takedown_records
from evaluation.predict import PredictConfig, run_predict, write_csv
from evaluation.suite import suite_report
from evaluation.tasks import EvaluateOptions, compare
from flows import stages
from flows.flags import default_of, kv_pairs
from flows.recipe import RecipeError, load_recipe, plan
from flows.report import demo_report
from flows.serve import check_bind, deploy, serve
from flows.stages import ExecutorConfig
from sample_world import build_sample_world, serve_sample_world
from sample_world.build import SampleWorldConfig
from taxonomy.diff import taxonomy_diff
from taxonomy.resolve import resolve_names
from training.config import PRESETS, load_config
from warehouse.catalog import Catalog, lock_down, open_catalog, read_only_statement
from warehouse.contracts import MODEL_SPEC_HELP
from warehouse.schemas import BUILD_PLAN
from warehouse.versions import list_versions, load_manifest, verify_version, version_root


class UsageError(ValueError):
    """A command line that parses but cannot mean anything (`versions show` without a name): exit 2."""


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def prefect_env(home: str) -> None:
    """Flows run in this process against Prefect's ephemeral server, its database under the home (unless
    PREFECT_API_URL points at a running server, whose UI then shows the runs)."""
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(home) / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite cannot create a missing folder
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The ephemeral server's telemetry write races its own start-up on SQLite ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


def _positional(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, "positional": True, **extra}


# --- demo and the sample world -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoArgs:
    # demo_flow's (a test holds it): its module imports Prefect, which building the parser should not
    seed: int = field(default=0, metadata=_help("the sample world's seed"))
    steps: int | None = field(default=None, metadata=_help("training steps (default: demo_flow's, 300)"))


def run_demo(home: str, cfg: DemoArgs) -> None:
    home = str(Path(home).resolve())
    prefect_env(home)
    from flows.demo import demo_flow  # imports Prefect, after its settings are in the environment

    started = datetime.now(UTC)
    summary = demo_flow(home=home, seed=cfg.seed, **({"steps": cfg.steps} if cfg.steps else {}))
    print(demo_report(open_catalog(home), summary, since=started))


@dataclass(frozen=True)
class SampleWorldArgs:
    seed: int = field(default=0, metadata=_help("the world's seed"))
    serve: bool = field(default=False, metadata=_help("serve it on loopback until interrupted"))
    port: int = field(default=0, metadata=_help("the port to serve on (0: any free port)"))


def run_sample_world(home: str, cfg: SampleWorldArgs) -> None:
    root = Path(home) / "sample_world"
    world = build_sample_world(root, SampleWorldConfig(seed=cfg.seed))
    planted = {k: v for k, v in world.planted.items() if not isinstance(v, list)}
    print(f"sample world under {world.root}: {json.dumps(planted)}")
    if cfg.serve:
        with serve_sample_world(root, port=cfg.port) as server:
            print(f"serving at {server.base_url} (Ctrl-C to stop)")
            while True:
                time.sleep(3600)


# --- recipes, serve, deploy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeArgs:
    recipe: str = field(metadata=_positional("the recipe file"))
    var: tuple[str, ...] = field(
        default=(), metadata=_help("a value for ${NAME} in the recipe (repeatable)", metavar="NAME=VALUE")
    )


@dataclass(frozen=True)
class RecipeRunArgs(RecipeArgs):
    until: str = field(
        default="train",
        metadata=_help(
            "the last step to run (train includes the evaluation)", choices=("ingest", "curate", "train")
        ),
    )
    train: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "a TrainConfig key that wins over the recipe, e.g. --train steps=80 (repeatable)",
            metavar="KEY=VALUE",
        ),
    )


def _recipe(path: str, var: tuple[str, ...]):
    try:
        return load_recipe(path, kv_pairs(list(var), "--var"))
    except RecipeError as exc:
        # Every problem on its own line: a recipe often has several.
        raise SystemExit("tol: the recipe has problems:\n  " + "\n  ".join(exc.problems)) from None


def run_recipe_validate(home: str, cfg: RecipeArgs) -> None:
    recipe = _recipe(cfg.recipe, cfg.var)
    spec = recipe.spec
    schedule = f"schedule '{spec.schedule.cron}' {spec.schedule.timezone}" if spec.schedule else "no schedule"
    print(
        f"{recipe.path}: valid recipe {spec.name} (sha256 {recipe.sha256}): {len(spec.sources)} pulls, "
        f"version {spec.curate.shard.version if spec.curate.shard else '-'}, "
        f"{len(spec.evaluate.tasks)} evaluation tasks, {schedule}"
    )


def run_recipe_plan(home: str, cfg: RecipeArgs) -> None:
    print("\n".join(plan(_recipe(cfg.recipe, cfg.var), Catalog(Path(home).resolve()))))


def run_recipe_run(home: str, cfg: RecipeRunArgs) -> None:
    home = str(Path(home).resolve())
    prefect_env(home)  # before anything imports Prefect
    _recipe(cfg.recipe, cfg.var)  # its problems, each on a line, before a flow starts
    from flows.pipeline import recipe_flow

    _print(
        recipe_flow(
            home,
            recipe_path=str(Path(cfg.recipe).resolve()),
            variables=kv_pairs(list(cfg.var), "--var"),
            until=cfg.until,
            train_overrides=kv_pairs(list(cfg.train), "--train") or None,
        )
    )


@dataclass(frozen=True)
class DeploymentArgs:
    """What `serve` and `deploy` share: the recipe whose settings the deployments take, and training slots."""

    recipe: str | None = field(
        default=None,
        metadata=_help(
            "a corpus recipe: its sources become the scheduled ingestion (at its cron and time zone), "
            "its settings the deployments' defaults (what Quick run uses)"
        ),
    )
    var: tuple[str, ...] = field(
        default=(), metadata=_help("a value for ${NAME} in the recipe", metavar="NAME=VALUE")
    )
    training_slots: int = field(
        default=default_of(serve, "training_slots"),
        metadata=_help(
            "training runs at once (the global concurrency limit tol-training, created when missing)"
        ),
    )


@dataclass(frozen=True)
class ServeArgs(DeploymentArgs):
    port: int = field(
        default=default_of(serve, "port"),
        metadata=_help("the server's port (the UI is http://127.0.0.1:PORT)"),
    )
    host: str = field(
        default=default_of(serve, "host"),
        metadata=_help(
            "the address to bind; beyond loopback only with PREFECT_SERVER_API_AUTH_STRING set "
            "(docs/recipes-and-ui.md: Trust model)"
        ),
    )
    allow_private_hosts: bool = field(
        default=False,
        metadata=_help("operator setting: let ingest and fetch runs reach private addresses (a LAN mirror)"),
    )


def run_serve(home: str, cfg: ServeArgs) -> None:
    check_bind(cfg.host)  # before the recipe is read or anything starts
    recipe = _recipe(cfg.recipe, cfg.var) if cfg.recipe else None
    serve(
        home, cfg.port, recipe, cfg.training_slots, host=cfg.host, allow_private_hosts=cfg.allow_private_hosts
    )


@dataclass(frozen=True)
class DeployArgs(DeploymentArgs):
    pool: str = field(default="tol-process", metadata=_help("the work pool"))
    no_create_pool: bool = field(default=False, metadata=_help("fail if the pool does not exist"))


def run_deploy(home: str, cfg: DeployArgs) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError(
            "PREFECT_API_URL is not set: point it at the Prefect server the workers use (e.g. http://HOST:4200/api)"
        )
    recipe = _recipe(cfg.recipe, cfg.var) if cfg.recipe else None
    names = deploy(
        str(Path(home).resolve()), cfg.pool, recipe, cfg.training_slots, create_pool=not cfg.no_create_pool
    )
    print("\n".join(names))
    print(f"start workers with: prefect worker start --pool {cfg.pool}")


# --- taxonomy ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadBackboneArgs:
    path: str = field(metadata=_positional("the checklist: a DwC-A zip or its unpacked folder"))
    common_name_fallback: bool = field(
        default=False,
        metadata=_help(
            "a taxon without an English name borrows its genus's or family's (flagged by common_name_rank)"
        ),
    )


def run_load_backbone(home: str, cfg: LoadBackboneArgs) -> None:
    print(stages.load_backbone(open_catalog(home), cfg.path, common_name_fallback=cfg.common_name_fallback))


@dataclass(frozen=True)
class DiffArgs:
    run_a: str = field(metadata=_positional("a succeeded resolve run"))
    run_b: str = field(metadata=_positional("another (e.g. against the Catalogue of Life XR backbone)"))
    out: str | None = field(
        default=None, metadata=_help("write every changed record to this .csv or .parquet file")
    )
    sample: int = field(
        default=default_of(taxonomy_diff, "sample"), metadata=_help("changed records shown in the summary")
    )


def run_diff(home: str, cfg: DiffArgs) -> None:
    _print(taxonomy_diff(open_catalog(home), cfg.run_a, cfg.run_b, out=cfg.out, sample=cfg.sample))


@dataclass(frozen=True)
class ResolveNamesArgs:
    input: str = field(
        metadata=_positional("a CSV file with a scientific_name column (and optional higher ranks)")
    )
    out: str = field(metadata=_help("the CSV file to write"))
    backbone: tuple[str, ...] = field(
        default=(), metadata=_help("a backbone version; repeat for a priority order (first wins)")
    )


def run_resolve_names(home: str, cfg: ResolveNamesArgs) -> None:
    with open(cfg.input, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "scientific_name" not in rows[0]:
        raise ValueError(f"{cfg.input}: needs a `scientific_name` column")
    out = resolve_names(open_catalog(home), rows, list(cfg.backbone) or None)
    with open(cfg.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(out[0]) if out else ["scientific_name"])
        writer.writeheader()
        writer.writerows(out)
    print(f"{len(out)} names -> {cfg.out}")


# --- dedup query, filter support, takedowns, versions --------------------------------------------------------


@dataclass(frozen=True)
class QueryArgs:
    images: tuple[str, ...] = field(metadata=_positional("image files to look up"))
    k: int = field(
        default=default_of(query_images, "k"),
        metadata=_help("Hamming distance of a hit, in bits of the 64-bit pHash"),
    )
    pdq_k: int | None = field(
        default=None,
        metadata=_help(
            "also hits within this many of 256 bits of the image's PDQ hash, among images fetched with --pdq "
            "(needs the `pdq` extra; the paper's leak threshold: 10)"
        ),
    )


def run_query(home: str, cfg: QueryArgs) -> None:
    _print(query_images(open_catalog(home), list(cfg.images), k=cfg.k, pdq_k=cfg.pdq_k))


@dataclass(frozen=True)
class SupportArgs:
    folder: str = field(metadata=_positional("the support folder: FOLDER/<category>/*.jpg"))
    model: str = field(metadata=_help(MODEL_SPEC_HELP))
    name: str = field(
        default=MuseumConfig.support, metadata=_help("the support set's name", name="support set")
    )
    k: int = field(
        default=default_of(build_support, "k"),
        metadata=_help("k-means centroids per category (fewer when it has fewer images)"),
    )
    seed: int = field(default=default_of(build_support, "seed"), metadata=_help("the k-means seed"))


def run_support(home: str, cfg: SupportArgs) -> None:
    catalog = open_catalog(home)
    _print(build_support(catalog, cfg.folder, name=cfg.name, model=cfg.model, k=cfg.k, seed=cfg.seed))


@dataclass(frozen=True)
class TakedownArgs:
    reason: str = field(metadata=_help("why (a rights holder's request, a licence change, ...)"))
    record: tuple[str, ...] = field(default=(), metadata=_help("a record id (repeatable)", name="record"))
    where: str | None = field(
        default=None, metadata=_help("an expression over raw_records, e.g. \"rights_holder = 'A. Person'\"")
    )
    by: str | None = field(default=None, metadata=_help("who asked"))


def run_takedown(home: str, cfg: TakedownArgs) -> None:
    _print(takedown_records(open_catalog(home), cfg.reason, list(cfg.record) or None, cfg.where, cfg.by))


@dataclass(frozen=True)
class NoArgs:
    pass


def run_affected(home: str, cfg: NoArgs) -> None:
    _print(affected_versions(open_catalog(home)))


VERSION_ACTIONS = ("list", "show", "verify", "which")


@dataclass(frozen=True)
class VersionsArgs:
    action: str = field(default="list", metadata=_positional("what to do", choices=VERSION_ACTIONS))
    name: str | None = field(
        default=None,
        metadata=_positional("the version (show, verify), or a record id (which)", name="version"),
    )
    card: bool = field(default=False, metadata=_help("show: the version's dataset card (README.md) instead"))
    executor: ExecutorConfig = field(default_factory=ExecutorConfig, metadata={"flags": ""})  # verify's units


def run_versions(home: str, cfg: VersionsArgs) -> None:
    if cfg.action != "list" and not cfg.name:
        raise UsageError(f"versions {cfg.action} needs a NAME")
    catalog = open_catalog(home)
    if cfg.action == "which":
        _print(versions_holding(catalog, cfg.name))
    elif cfg.action == "show" and cfg.card:
        root = version_root(catalog, cfg.name)
        card = root / "README.md"  # written with the version; older versions' cards are made now
        manifest = load_manifest(catalog, cfg.name)
        print(card.read_text() if card.exists() else render_card(catalog, manifest, root / BUILD_PLAN))
    elif cfg.action == "show":
        _print(load_manifest(catalog, cfg.name))
    elif cfg.action == "verify":
        problems = verify_version(catalog, cfg.name, cfg.executor.build())
        for p in problems:
            print(p)
        if problems:
            raise SystemExit(f"tol: version {cfg.name} failed verification ({len(problems)} problems)")
        print(f"{cfg.name}: all shards match the manifest")
    else:
        _print(list_versions(catalog))


# --- training, evaluation, prediction ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainArgs:
    overrides: tuple[str, ...] = field(
        default=(),
        metadata=_positional(
            "TrainConfig keys, applied last, e.g. dataset_version=v1 steps=300 replay_batch_size=0",
            metavar="KEY=VALUE",
        ),
    )
    config: str | None = field(
        default=None, metadata=_help("a YAML file of TrainConfig keys (applied after the preset)")
    )
    preset: str = field(default="cpu-tiny", metadata=_help("the base config", choices=tuple(sorted(PRESETS))))
    devices: int = field(
        default=default_of(stages.train, "devices"),
        metadata=_help("processes (GPUs) for data-parallel training through torchrun"),
    )


def run_train(home: str, cfg: TrainArgs) -> None:
    config = load_config(cfg.config, list(cfg.overrides), preset=cfg.preset)
    _print(stages.train(open_catalog(home), config, devices=cfg.devices))


def run_evaluate(home: str, opts: EvaluateOptions) -> None:
    catalog = open_catalog(home)
    if opts.suite:
        summary = stages.evaluate_suite(catalog, opts)
        print(suite_report(summary))
        if summary["failed"]:
            raise RuntimeError(
                "benchmarks failed: " + "; ".join(f"{k}: {v}" for k, v in summary["failed"].items())
            )
        return
    if not opts.model:
        raise ValueError(
            "--model is required (a run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME)"
        )
    results = stages.evaluate_with(catalog, opts)
    _print(results if len(results) > 1 else results[0])


@dataclass(frozen=True)
class CompareArgs:
    models: tuple[str, ...] = field(
        default=(), metadata=_positional("models or training runs to compare (default: every stored result)")
    )


def run_compare(home: str, cfg: CompareArgs) -> None:
    rows = compare(open_catalog(home), list(cfg.models) or None)
    if not rows:
        raise LookupError("no evaluation results to compare")
    cols = list(rows[0])
    print("\t".join(cols))
    for r in rows:
        cells = (
            f"{r[c]:.4f}" if isinstance(r[c], float) else ("" if r[c] is None else str(r[c])) for c in cols
        )
        print("\t".join(cells))


def run_predict_command(home: str, cfg: PredictConfig) -> None:
    rows, n_labels = run_predict(open_catalog(home), cfg)
    if not cfg.out:
        write_csv(rows)
        return
    with open(cfg.out, "w", newline="", encoding="utf-8") as fh:
        write_csv(rows, fh)
    print(f"{len(rows)} predictions of {len(cfg.images)} images among {n_labels} labels -> {cfg.out}")


# --- sql -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlArgs:
    query: str = field(metadata=_positional("one SQL statement"))
    write: bool = field(default=False, metadata=_help("allow statements that change the catalog"))
    format: str = field(default="table", metadata=_help("output format", choices=("table", "csv", "json")))
    max_rows: int = field(default=100, metadata=_help("rows shown by --format table"))


def run_sql(home: str, cfg: SqlArgs) -> None:
    if cfg.write:
        catalog = open_catalog(home)
    else:
        catalog = Catalog(Path(home).resolve())
        if not catalog.db_path.exists():
            raise FileNotFoundError(f"no catalog at {catalog.db_path}: check --home, or run a stage first")
    # Read-only by default, on a snapshot: the catalog file is held only while its small tables are copied
    # (a fraction of a second), so a query of any length never holds back a stage that needs to commit.
    if not cfg.write and not read_only_statement(cfg.query):
        raise PermissionError(
            "tol sql is read-only: the query changes something; pass --write to change the catalog"
        )
    with catalog.connect() if cfg.write else catalog.snapshot() as con:
        if not cfg.write:
            lock_down(con, catalog.home)  # reads the lake's parts; no other file, no ATTACH, no settings
        rel = con.sql(cfg.query)
        if rel is None:
            return
        if cfg.format == "table":
            rel.show(max_width=200, max_rows=cfg.max_rows)
            return
        table = rel.to_arrow_table()
        if cfg.format == "json":
            print(json.dumps(table.to_pylist(), indent=1, default=str))
            return
        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        for row in table.to_pylist():
            writer.writerow([row[c] for c in table.column_names])


# --- the table -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A command that is not a stage: its words (`taxonomy diff`), help, config class and function."""

    name: str
    help: str
    config: type
    run: Callable[[str, Any], None]
    description: str = ""  # the --help text when longer than `help`


# A group of commands with nothing of its own to run (`tol taxonomy ACTION`): its help.
GROUPS = {
    "filter": "content scores for the kept images (scores only: a version's --filter rules decide)",
    "recipe": "validate, plan or run a corpus recipe (YAML)",
    "taxonomy": "backbones and name resolution",
    "takedown": "take records down: every later version leaves them out and counts them",
}

_RECIPE = (
    "A corpus recipe says which sources to pull and how, the curation settings, the version to build, "
    "training, evaluation and the ingestion schedule. See sample_world/recipe.yaml."
)

COMMANDS: tuple[Command, ...] = (
    Command("demo", "run every stage on the offline sample world, from sample_world/recipe.yaml", DemoArgs, run_demo),
    Command("recipe validate", "check a recipe; every problem is printed with its line", RecipeArgs,
            run_recipe_validate, _RECIPE),
    Command("recipe plan", "print what would be pulled and built, pulling nothing", RecipeArgs, run_recipe_plan,
            _RECIPE),
    Command("recipe run", "ingest, curate, train and evaluate as the recipe says", RecipeRunArgs, run_recipe_run,
            _RECIPE),
    Command("taxonomy load-backbone", "load a DwC-A checklist (zip or folder) as a backbone version",
            LoadBackboneArgs, run_load_backbone),
    Command("taxonomy diff", "per record, the labels that changed between two resolve runs (two backbones, "
            "say), rank by rank", DiffArgs, run_diff),
    Command("taxonomy resolve-names", "resolve a CSV of names (scientific_name [, kingdom ... genus])",
            ResolveNamesArgs, run_resolve_names),
    Command("dedup query", "find the catalog images within k bits of each image's pHash: record, source, "
            "licence, dedup decision, leak, versions", QueryArgs, run_query),
    Command("filter build-support", "embed a support folder (one sub-folder of images per category) and "
            "store k centroids per category", SupportArgs, run_support),
    Command("takedown add", "record a takedown request (who, when, why) over records by id or by an "
            "expression over raw_records", TakedownArgs, run_takedown),
    Command("takedown affected", "the existing versions that still hold taken-down records", NoArgs, run_affected),
    Command("predict", "zero-shot top-k among the catalog's taxa (or a label file), optionally within a clade",
            PredictConfig, run_predict_command),
    Command("versions", "list, show or verify dataset versions", VersionsArgs, run_versions),
    Command("train", "train BioCLIP 2 with replay (a progress bar, and a log line every log_every steps)",
            TrainArgs, run_train),
    Command("evaluate", "run evaluation tasks (`tol evaluate compare` prints stored results)", EvaluateOptions,
            run_evaluate),
    Command("evaluate compare", "print a table of stored evaluation results", CompareArgs, run_compare),
    Command("sql", "run SQL over the catalog (read-only unless --write)", SqlArgs, run_sql,
            "Run one SQL statement over the catalog's tables and views (docs/catalog.md lists every column). "
            "Read-only by default, on a snapshot: a long query never holds a stage back. With --write, waits "
            "while a stage is writing (TOL_CATALOG_WAIT seconds, default 600). "
            'Example: tol sql "SELECT stage, status, n_in, n_out FROM stage_runs ORDER BY started_at"'),
    Command("serve", "start a local Prefect server (UI) with the deployments", ServeArgs, run_serve,
            "A Prefect server on 127.0.0.1 (SQLite under HOME/prefect) serving four deployments: "
            "scheduled-ingest, curate, train (which chains the evaluation) and evaluate. The one-command local "
            "path; see `tol deploy` for workers."),
    Command("deploy", "register the deployments to a work pool (the production path)", DeployArgs, run_deploy,
            "Register the four deployments with the Prefect server at PREFECT_API_URL, on a process work pool. "
            "Run them with `prefect worker start --pool POOL` on machines that see HOME and have this package "
            "installed. With several workers, use Postgres as the server's database "
            "(PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...)."),
    Command("sample-world", "build (and optionally serve) the offline sample world", SampleWorldArgs,
            run_sample_world),
)  # fmt: skip
