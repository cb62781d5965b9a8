"""`tol`: the thin command line over the stage functions and flows. Each command exits non-zero with a
one-line reason on bad input (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from flows.flags import add_config_flags, default_of, from_flags, kv_pairs, name_type
from flows.stages import INPUTS, STAGES, ExecutorConfig
from warehouse.contracts import MODEL_SPEC_HELP


def _catalog(args):
    from warehouse.catalog import open_catalog

    return open_catalog(args.home)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _prefect_env(home: str) -> None:
    """Flows run in this process against Prefect's ephemeral server, its database under the home (unless
    PREFECT_API_URL points at a running server, whose UI then shows the runs)."""
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(home) / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect's SQLite cannot create a missing folder
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The ephemeral server's telemetry write races its own start-up on SQLite ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_demo(args) -> None:
    home = str(Path(args.home).resolve())
    _prefect_env(home)
    from flows.demo import demo_flow
    from flows.report import demo_report

    started = _now()
    summary = demo_flow(home=home, seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    print(demo_report(_catalog(args), summary, since=started))


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _executor(args):
    from flows.stages import ExecutorConfig

    return from_flags(ExecutorConfig, args)


def cmd_stage(args) -> None:
    """A stage of `stages.STAGES`: its config from its flags, the runs it reads, its executor."""
    from flows.stages import ExecutorConfig

    st = args.stage
    inputs = {name: getattr(args, name) for name in st.inputs} | ({"full": args.full} if st.full else {})
    executor = from_flags(ExecutorConfig, args) if st.executor else None
    _print(st.run(_catalog(args), from_flags(st.config, args), inputs, executor, progress=True))


def cmd_taxonomy(args) -> None:
    from flows import stages
    from taxonomy.resolve import resolve_names

    catalog = _catalog(args)
    if args.taxonomy_cmd == "load-backbone":
        print(stages.load_backbone(catalog, args.path, common_name_fallback=args.common_name_fallback))
        return
    if args.taxonomy_cmd == "diff":
        from taxonomy.diff import taxonomy_diff

        _print(taxonomy_diff(catalog, args.run_a, args.run_b, out=args.out, sample=args.sample))
        return
    with open(args.input, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and "scientific_name" not in rows[0]:
        raise ValueError(f"{args.input}: needs a `scientific_name` column")
    out = resolve_names(catalog, rows, args.backbone)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(out[0]) if out else ["scientific_name"])
        writer.writeheader()
        writer.writerows(out)
    print(f"{len(out)} names -> {args.out}")


def cmd_dedup_query(args) -> None:
    from etl.dedup.query import query_images

    _print(query_images(_catalog(args), args.images, k=args.k, pdq_k=args.pdq_k))


def cmd_filter_support(args) -> None:
    from etl.filter.support import build_support

    _print(
        build_support(_catalog(args), args.folder, name=args.name, model=args.model, k=args.k, seed=args.seed)
    )


def cmd_versions(args) -> None:
    from warehouse.versions import list_versions, load_manifest, verify_version

    catalog = _catalog(args)
    if args.action == "which":
        from etl.dedup.query import versions_holding

        _print(versions_holding(catalog, args.name))
        return
    if args.action == "show" and args.card:
        from etl.shards.card import render_card
        from warehouse.schemas import BUILD_PLAN
        from warehouse.versions import version_root

        root = version_root(catalog, args.name)
        card = root / "README.md"  # written with the version; older versions' cards are made now
        print(
            card.read_text()
            if card.exists()
            else render_card(catalog, load_manifest(catalog, args.name), root / BUILD_PLAN)
        )
    elif args.action == "show":
        _print(load_manifest(catalog, args.name))
    elif args.action == "verify":
        from etl.executors import get_executor

        ex = _executor(args)
        executor = get_executor(ex.name, ex.workers, ex.spark_master)
        problems = verify_version(catalog, args.name, executor)
        for p in problems:
            print(p)
        if problems:
            raise SystemExit(f"tol: version {args.name} failed verification ({len(problems)} problems)")
        print(f"{args.name}: all shards match the manifest")
    else:
        _print(list_versions(catalog))


def cmd_train(args) -> None:
    from flows import stages
    from training.config import load_config

    cfg = load_config(args.config, args.overrides, preset=args.preset)
    _print(stages.train(_catalog(args), cfg, devices=args.devices))


def cmd_evaluate(args) -> None:
    from evaluation.suite import suite_report
    from evaluation.tasks import EvaluateOptions, compare
    from flows import stages

    catalog = _catalog(args)
    if args.targets and args.targets[0] == "compare":
        rows = compare(catalog, args.targets[1:] or None)
        if not rows:
            raise LookupError("no evaluation results to compare")
        cols = list(rows[0])
        print("\t".join(cols))
        for r in rows:
            print(
                "\t".join(
                    f"{r[c]:.4f}" if isinstance(r[c], float) else ("" if r[c] is None else str(r[c]))
                    for c in cols
                )
            )
        return
    if args.targets:
        raise ValueError(f"unexpected arguments {args.targets}; did you mean `tol evaluate compare ...`?")
    opts = from_flags(EvaluateOptions, args)
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


def cmd_takedown(args) -> None:
    from etl.shards.takedowns import affected_versions, takedown_records

    catalog = _catalog(args)
    if args.takedown_cmd == "affected":
        _print(affected_versions(catalog))
    else:
        _print(takedown_records(catalog, args.reason, args.record, args.where, args.by))


def cmd_predict(args) -> None:
    from evaluation.predict import PredictConfig, run_predict, write_csv

    cfg = from_flags(PredictConfig, args)
    rows, n_labels = run_predict(_catalog(args), cfg, args.images)
    if not cfg.out:
        write_csv(rows)
        return
    with open(cfg.out, "w", newline="", encoding="utf-8") as fh:
        write_csv(rows, fh)
    print(f"{len(rows)} predictions of {len(args.images)} images among {n_labels} labels -> {cfg.out}")


def cmd_sql(args) -> None:
    from warehouse.catalog import Catalog, lock_down, read_only_statement

    if args.write:
        catalog = _catalog(args)
    else:
        catalog = Catalog(Path(args.home).resolve())
        if not catalog.db_path.exists():
            raise FileNotFoundError(f"no catalog at {catalog.db_path}: check --home, or run a stage first")
    # Read-only by default, on a snapshot: the catalog file is held only while its small tables are copied
    # (a fraction of a second), so a query of any length never holds back a stage that needs to commit.
    if not args.write and not read_only_statement(args.query):
        raise PermissionError(
            "tol sql is read-only: the query changes something; pass --write to change the catalog"
        )
    with catalog.connect() if args.write else catalog.snapshot() as con:
        if not args.write:
            lock_down(con, catalog.home)  # reads the lake's parts; no other file, no ATTACH, no settings
        rel = con.sql(args.query)
        if rel is None:
            return
        if args.format == "table":
            rel.show(max_width=200, max_rows=args.max_rows)
            return
        table = rel.to_arrow_table()
        if args.format == "json":
            print(json.dumps(table.to_pylist(), indent=1, default=str))
        else:
            writer = csv.writer(sys.stdout)
            writer.writerow(table.column_names)
            for row in table.to_pylist():
                writer.writerow([row[c] for c in table.column_names])


def _recipe(args):
    from flows.recipe import RecipeError, load_recipe

    try:
        return load_recipe(args.recipe, kv_pairs(args.var, "--var"))
    except RecipeError as exc:
        # Every problem on its own line: a recipe often has several.
        raise SystemExit("tol: the recipe has problems:\n  " + "\n  ".join(exc.problems)) from None


def cmd_recipe(args) -> None:
    from flows.recipe import plan

    if args.recipe_cmd == "run":
        _prefect_env(str(Path(args.home).resolve()))  # before reading the recipe first imports prefect
    recipe = _recipe(args)
    spec = recipe.spec
    if args.recipe_cmd == "validate":
        print(
            f"{recipe.path}: valid recipe {spec.name} (sha256 {recipe.sha256}): {len(spec.sources)} pulls, "
            f"version {spec.curate.shard.version if spec.curate.shard else '-'}, "
            f"{len(spec.evaluate.tasks)} evaluation tasks, "
            + (
                f"schedule '{spec.schedule.cron}' {spec.schedule.timezone}"
                if spec.schedule
                else "no schedule"
            )
        )
    elif args.recipe_cmd == "plan":
        from warehouse.catalog import Catalog

        print("\n".join(plan(recipe, Catalog(Path(args.home).resolve()))))
    else:
        from flows.pipeline import recipe_flow

        out = recipe_flow(
            str(Path(args.home).resolve()),
            recipe_path=str(Path(args.recipe).resolve()),
            variables=kv_pairs(args.var, "--var"),
            until=args.until,
            train_overrides=kv_pairs(args.train, "--train") or None,
        )
        _print(out)


def cmd_serve(args) -> None:
    from flows.serve import check_bind, serve

    check_bind(args.host)  # before the recipe is read or anything starts
    serve(
        args.home,
        args.port,
        _recipe(args) if args.recipe else None,
        args.training_slots,
        host=args.host,
        allow_private_hosts=args.allow_private_hosts,
    )


def cmd_deploy(args) -> None:
    from flows.serve import deploy

    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError(
            "PREFECT_API_URL is not set: point it at the Prefect server the workers use "
            "(e.g. http://HOST:4200/api)"
        )
    names = deploy(
        str(Path(args.home).resolve()),
        args.pool,
        _recipe(args) if args.recipe else None,
        args.training_slots,
        create_pool=not args.no_create_pool,
    )
    print("\n".join(names))
    print(f"start workers with: prefect worker start --pool {args.pool}")


def cmd_sample_world(args) -> None:
    from sample_world import build_sample_world, serve_sample_world
    from sample_world.build import SampleWorldConfig

    root = Path(args.home) / "sample_world"
    world = build_sample_world(root, SampleWorldConfig(seed=args.seed))
    print(
        f"sample world under {world.root}: {json.dumps({k: v for k, v in world.planted.items() if not isinstance(v, list)})}"
    )
    if args.serve:
        import time

        with serve_sample_world(root, port=args.port) as server:
            print(f"serving at {server.base_url} (Ctrl-C to stop)")
            while True:
                time.sleep(3600)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends with the default, unless there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


PARENT_HELP = {
    "filter": "content scores for the kept images (scores only: a version's --filter rules decide)"
}


def build_parser() -> argparse.ArgumentParser:
    # The rooms whose defaults the flags show, imported when a parser is built (not by `import flows.cli`).
    from etl.dedup.query import query_images
    from etl.filter.scorers import MuseumConfig
    from etl.filter.support import build_support
    from evaluation.predict import PredictConfig
    from evaluation.tasks import EvaluateOptions
    from flows import stages
    from flows.serve import serve
    from taxonomy.diff import taxonomy_diff
    from training.config import PRESETS

    fmt = _DefaultsHelp  # every argument's help ends with its default
    p = argparse.ArgumentParser(
        prog="tol", description="TreeOfLife curation pipeline and BioCLIP 2 training", formatter_class=fmt
    )
    p.add_argument(
        "--home", default=os.environ.get("TOL_HOME", "tol-data"), help="catalog home folder (or TOL_HOME)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--log-level",
        default=os.environ.get("TOL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stage logs on stderr (or TOL_LOG_LEVEL)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, fn, description: str | None = None) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=description or help, formatter_class=fmt)
        s.set_defaults(fn=fn)
        return s

    s = command(
        "demo", "run every stage on the offline sample world, from sample_world/recipe.yaml", cmd_demo
    )
    s.add_argument(
        "--seed", type=int, default=0, help="the sample world's seed"
    )  # demo_flow's (a test holds it)
    s.add_argument("--steps", type=int, help="training steps (default: demo_flow's, 300)")

    s = command(
        "recipe",
        "validate, plan or run a corpus recipe (YAML)",
        cmd_recipe,
        "A corpus recipe says which sources to pull and how, the curation settings, the version to build, "
        "training, evaluation and the ingestion schedule. See sample_world/recipe.yaml.",
    )
    rsub = s.add_subparsers(dest="recipe_cmd", required=True, metavar="ACTION")
    for action, text in (
        ("validate", "check a recipe; every problem is printed with its line"),
        ("plan", "print what would be pulled and built, pulling nothing"),
        ("run", "ingest, curate, train and evaluate as the recipe says"),
    ):
        r = rsub.add_parser(action, help=text, description=text, formatter_class=fmt)
        r.add_argument("recipe", help="the recipe file")
        r.add_argument(
            "--var",
            action="append",
            metavar="NAME=VALUE",
            help="a value for ${NAME} in the recipe (repeatable)",
        )
        if action == "run":
            r.add_argument(
                "--until",
                choices=["ingest", "curate", "train"],
                default="train",
                help="the last step to run (train includes the evaluation)",
            )
            r.add_argument(
                "--train",
                action="append",
                metavar="KEY=VALUE",
                help="a TrainConfig key that wins over the recipe, e.g. --train steps=80 (repeatable)",
            )

    parents: dict[str, argparse._SubParsersAction] = {}
    stage_parsers: dict[str, argparse.ArgumentParser] = {}
    for st in STAGES:  # each stage's flags come from its config's fields
        words = (st.command or st.name).split()
        if len(words) == 1:
            s = command(st.name, st.help, cmd_stage)
        else:
            if words[0] not in parents:
                parent = command(words[0], PARENT_HELP[words[0]], cmd_stage)
                parents[words[0]] = parent.add_subparsers(
                    dest=f"{words[0]}_cmd", required=True, metavar="ACTION"
                )
            s = parents[words[0]].add_parser(words[1], help=st.help, description=st.help, formatter_class=fmt)
            s.set_defaults(fn=cmd_stage)
        s.set_defaults(stage=st)
        add_config_flags(s, st.config)
        for name in st.inputs:
            s.add_argument("--" + name.replace("_", "-"), help=INPUTS[name])
        if st.full:
            s.add_argument("--full", action="store_true", help=st.full)
        if st.executor:
            add_config_flags(s, ExecutorConfig)
        stage_parsers[st.name] = s

    s = command("taxonomy", "backbones and name resolution", cmd_taxonomy)
    tsub = s.add_subparsers(dest="taxonomy_cmd", required=True, metavar="ACTION")
    text = "load a DwC-A checklist (zip or folder) as a backbone version"
    t = tsub.add_parser("load-backbone", help=text, description=text, formatter_class=fmt)
    t.add_argument("path", help="the checklist: a DwC-A zip or its unpacked folder")
    t.add_argument(
        "--common-name-fallback",
        action="store_true",
        help="a taxon without an English name borrows its genus's or family's (flagged by common_name_rank)",
    )
    text = "per record, the labels that changed between two resolve runs (two backbones, say), rank by rank"
    t = tsub.add_parser("diff", help=text, description=text, formatter_class=fmt)
    t.add_argument("run_a", help="a succeeded resolve run")
    t.add_argument("run_b", help="another (e.g. against the Catalogue of Life XR backbone)")
    t.add_argument("--out", help="write every changed record to this .csv or .parquet file")
    t.add_argument(
        "--sample",
        type=int,
        default=default_of(taxonomy_diff, "sample"),
        help="changed records shown in the summary",
    )
    text = "resolve a CSV of names (scientific_name [, kingdom ... genus])"
    t = tsub.add_parser("resolve-names", help=text, description=text, formatter_class=fmt)
    t.add_argument("input", help="a CSV file with a scientific_name column (and optional higher ranks)")
    t.add_argument("--out", required=True, help="the CSV file to write")
    t.add_argument(
        "--backbone", action="append", help="a backbone version; repeat for a priority order (first wins)"
    )

    s = stage_parsers["dedup"]
    qsub = s.add_subparsers(dest="dedup_cmd", required=False, metavar="[query]")
    text = "find the catalog images within k bits of each image's pHash: record, source, licence, dedup decision, leak, versions"
    q = qsub.add_parser("query", help=text, description=text, formatter_class=fmt)
    q.set_defaults(fn=cmd_dedup_query)
    q.add_argument(
        "--pdq-k",
        type=int,
        help="also hits within this many of 256 bits of the image's PDQ hash, among images fetched with --pdq "
        "(needs the `pdq` extra; the paper's leak threshold: 10)",
    )
    q.add_argument("images", nargs="+", help="image files to look up")
    q.add_argument(
        "--k",
        type=int,
        default=default_of(query_images, "k"),
        help="Hamming distance of a hit, in bits of the 64-bit pHash",
    )
    fsub = parents["filter"]
    text = "embed a support folder (one sub-folder of images per category) and store k centroids per category"
    f = fsub.add_parser("build-support", help=text, description=text, formatter_class=fmt)
    f.set_defaults(fn=cmd_filter_support)
    f.add_argument("folder", help="the support folder: FOLDER/<category>/*.jpg")
    f.add_argument(
        "--name", default=MuseumConfig.support, type=name_type("support set"), help="the support set's name"
    )
    f.add_argument(
        "--model",
        required=True,
        help=MODEL_SPEC_HELP,
    )
    f.add_argument(
        "--k",
        type=int,
        default=default_of(build_support, "k"),
        help="k-means centroids per category (fewer when it has fewer images)",
    )
    f.add_argument("--seed", type=int, default=default_of(build_support, "seed"), help="the k-means seed")

    s = command(
        "takedown", "take records down: every later version leaves them out and counts them", cmd_takedown
    )
    tdsub = s.add_subparsers(dest="takedown_cmd", required=True, metavar="ACTION")
    text = (
        "record a takedown request (who, when, why) over records by id or by an expression over raw_records"
    )
    t = tdsub.add_parser("add", help=text, description=text, formatter_class=fmt)
    t.add_argument("--record", action="append", type=name_type("record"), help="a record id (repeatable)")
    t.add_argument("--where", help="an expression over raw_records, e.g. \"rights_holder = 'A. Person'\"")
    t.add_argument("--reason", required=True, help="why (a rights holder's request, a licence change, ...)")
    t.add_argument("--by", help="who asked")
    text = "the existing versions that still hold taken-down records"
    tdsub.add_parser("affected", help=text, description=text, formatter_class=fmt)

    s = command(
        "predict",
        "zero-shot top-k among the catalog's taxa (or a label file), optionally within a clade",
        cmd_predict,
    )
    s.add_argument("images", nargs="+", help="image files")
    add_config_flags(s, PredictConfig)

    s = command("versions", "list, show or verify dataset versions", cmd_versions)
    s.add_argument(
        "action", nargs="?", choices=["list", "show", "verify", "which"], default="list", help="what to do"
    )
    s.add_argument(
        "name",
        nargs="?",
        type=name_type("version"),
        help="the version (show, verify), or a record id (which)",
    )
    s.add_argument("--card", action="store_true", help="show: the version's dataset card (README.md) instead")
    add_config_flags(s, ExecutorConfig)  # verify: one work unit per shard

    s = command(
        "train",
        "train BioCLIP 2 with replay (a progress bar, and a log line every log_every steps)",
        cmd_train,
    )
    s.add_argument("--config", help="a YAML file of TrainConfig keys (applied after the preset)")
    s.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS), help="the base config")
    s.add_argument(
        "--devices",
        type=int,
        default=default_of(stages.train, "devices"),
        help="processes (GPUs) for data-parallel training through torchrun",
    )
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="TrainConfig keys, applied last, e.g. dataset_version=v1 steps=300 replay_batch_size=0",
    )

    s = command("evaluate", "run evaluation tasks, or compare stored results", cmd_evaluate)
    s.add_argument("targets", nargs="*", help="`compare [MODEL_OR_RUN ...]` to print a comparison table")
    add_config_flags(s, EvaluateOptions)

    s = command(
        "sql",
        "run SQL over the catalog (read-only unless --write)",
        cmd_sql,
        "Run one SQL statement over the catalog's tables and views (the README's catalog section lists "
        "every column). Read-only by default, on a snapshot: a long query never holds a stage back. "
        "With --write, waits while a stage is writing (TOL_CATALOG_WAIT seconds, default 600). "
        'Example: tol sql "SELECT stage, status, n_in, n_out FROM stage_runs ORDER BY started_at"',
    )
    s.add_argument("query", help="one SQL statement")
    s.add_argument("--write", action="store_true", help="allow statements that change the catalog")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    s.add_argument("--max-rows", type=int, default=100, help="rows shown by --format table")

    def recipe_args(s: argparse.ArgumentParser) -> None:
        s.add_argument(
            "--recipe",
            help="a corpus recipe: its sources become the scheduled ingestion (at its cron and time zone), "
            "its settings the deployments' defaults (what Quick run uses)",
        )
        s.add_argument(
            "--var", action="append", metavar="NAME=VALUE", help="a value for ${NAME} in the recipe"
        )
        s.add_argument(
            "--training-slots",
            type=int,
            default=default_of(serve, "training_slots"),
            help="training runs at once (the global concurrency limit tol-training, created when missing)",
        )

    s = command(
        "serve",
        "start a local Prefect server (UI) with the deployments",
        cmd_serve,
        "A Prefect server on 127.0.0.1 (SQLite under HOME/prefect) serving four deployments: scheduled-ingest,"
        " curate, train (which chains the evaluation) and evaluate. The one-command local path; see "
        "`tol deploy` for workers.",
    )
    s.add_argument(
        "--port",
        type=int,
        default=default_of(serve, "port"),
        help="the server's port (the UI is http://127.0.0.1:PORT)",
    )
    s.add_argument(
        "--host",
        default=default_of(serve, "host"),
        help="the address to bind; beyond loopback only with PREFECT_SERVER_API_AUTH_STRING set (README: Trust model)",
    )
    s.add_argument(
        "--allow-private-hosts",
        action="store_true",
        help="operator setting: let ingest and fetch runs reach private addresses (a LAN mirror)",
    )
    recipe_args(s)

    s = command(
        "deploy",
        "register the deployments to a work pool (the production path)",
        cmd_deploy,
        "Register the four deployments with the Prefect server at PREFECT_API_URL, on a process work pool. "
        "Run them with `prefect worker start --pool POOL` on machines that see HOME and have this package "
        "installed. With several workers, use Postgres as the server's database "
        "(PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...).",
    )
    s.add_argument("--pool", default="tol-process", help="the work pool")
    s.add_argument("--no-create-pool", action="store_true", help="fail if the pool does not exist")
    recipe_args(s)

    s = command("sample-world", "build (and optionally serve) the offline sample world", cmd_sample_world)
    s.add_argument("--seed", type=int, default=0, help="the world's seed")
    s.add_argument("--serve", action="store_true", help="serve it on loopback until interrupted")
    s.add_argument("--port", type=int, default=0, help="the port to serve on (0: any free port)")
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a record comes, not as it was when the handler was made: `main`
    may run again in one process with stderr replaced (a test's capture, a caller's redirect), and the
    stream of an earlier call may be closed by then."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _logging(level: str) -> None:
    """The stages' loggers (`tol.<stage>`) on stderr; stdout stays the command's result."""
    logger = logging.getLogger("tol")
    logger.setLevel(level)
    logger.propagate = False  # printed once, here; not again by handlers others put on the root logger
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.log_level)
    if args.command == "versions" and args.action in ("show", "verify") and not args.name:
        print(f"tol: error: versions {args.action} needs a NAME", file=sys.stderr)
        return 2
    try:
        args.fn(args)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if args.debug:
            raise
        print(f"tol: error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
