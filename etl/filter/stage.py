"""Filter stage: content scores for the images a dedup run kept, one row per image and scorer in the lake
table `filter_scores_history` (view `filter_scores`: the current score). Nothing is removed here: a dataset
version's `FilterRule`s decide, when it is built, and count what each removed.

It runs after dedup, on the kept images only: the image scorers are the pipeline's most expensive per-image
step after the download, and dedup's choices do not depend on content scores, so scoring the copies it drops
would be wasted. Scores are per image, so a later dedup run reuses them: only images without a score from
the same scorer and model version are scored (`rescore` scores all again).

- `image_type` and `burst` are set-wise SQL over the catalog (no image is read): one part each per run.
- `faces` and `museum_category` read images. The driver writes the plan (record id and where the JPEG lies,
  in blob order) to the run's work folder; each work unit is a row range of it. The worker reads those rows
  and exactly their bytes, scores them in batches, writes its own part and returns one small row of counts.
  A killed run keeps its finished units' parts; the rerun scores only what has no score yet.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from etl.executors import LOCAL, ExecutorConfig, Unit
from etl.filter.image_type import image_type_sql, load_rules
from etl.filter.scorers import (
    IMAGE_SCORERS,
    FaceConfig,
    MuseumConfig,
    details_json,
    face_model_version,
    require_facenet,
)
from etl.filter.support import load_support
from evaluation.tasks import resolve_model
from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import FILTER_SCORERS
from warehouse.lake import read_image_blobs, read_rows, write_part
from warehouse.schemas import FILTER_SCORES
from warehouse.stage_runs import StageRun, succeeded_runs

log = logging.getLogger("tol.filter")

UNIT_RESULT = pa.schema([("scorer", pa.string()), ("n", pa.int64()), ("errors", pa.int64())])


@dataclass(frozen=True)
class FilterConfig:
    scorers: tuple[str, ...] = field(  # image_type is added when missing
        default=("image_type", "burst"),
        metadata={
            "help": "a scorer to run (repeatable; default image_type and burst; image_type always runs)",
            "flag": "--scorer",
            "choices": FILTER_SCORERS,
        },
    )
    image_type_rules: str | None = field(
        default=None, metadata={"help": "an image-type rules file (default: etl/filter/image_types.yaml)"}
    )
    faces: FaceConfig = field(default_factory=FaceConfig, metadata={"flags": "face-"})
    museum: MuseumConfig = field(default_factory=MuseumConfig, metadata={"flags": "museum-"})
    device: str = field(
        default="cpu", metadata={"help": "torch device of the image scorers (cpu, cuda, cuda:1)"}
    )
    batch_size: int = field(default=16, metadata={"help": "images per scorer call"})
    partition_rows: int = field(default=256, metadata={"help": "images per work unit (one lake part)"})
    rescore: bool = field(default=False, metadata={"help": "score again images that have a score already"})

    def __post_init__(self) -> None:
        unknown = [s for s in self.scorers if s not in FILTER_SCORERS]
        if unknown:
            raise ValueError(
                f"unknown scorer(s) {', '.join(unknown)}; choose from: {', '.join(FILTER_SCORERS)}"
            )
        # image_type always runs, first: the other scorers' domains (camera traps, museum specimens) are its
        # labels. The rest run in the vocabulary's order, cheap before expensive.
        wanted = {"image_type", *self.scorers}
        object.__setattr__(self, "scorers", tuple(s for s in FILTER_SCORERS if s in wanted))
        if "museum_category" in self.scorers and not self.museum.model:
            raise ValueError(
                "the museum_category scorer needs museum.model (a training run, export or hub model)"
            )
        if self.batch_size < 1 or self.partition_rows < 1:
            raise ValueError("batch_size and partition_rows must be >= 1")


# Which kept images each image scorer covers, as a condition on the current `image_type` label `t.label`.
DOMAINS: dict[str, str] = {"faces": "true", "museum_category": "t.label = 'museum_specimen'"}


def _kept_sql(dedup_run: str) -> str:
    run = dedup_run.replace("'", "''")
    return f"""SELECT d.record_id FROM dedup_decisions_as_of('{run}') d WHERE d.kept"""


def _sql_scorer_image_type(cfg: FilterConfig, run_id: str, dedup_run: str) -> tuple[str, str]:
    rules = load_rules(cfg.image_type_rules)
    sql = f"""SELECT r.record_id, 'image_type' AS scorer, 'rules' AS model, '{rules.sha256[:16]}' AS model_version,
                     NULL AS score, {image_type_sql(rules)} AS label,
                     json_object('ingest_guess', r.img_type, 'basis_of_record', r.basis_of_record) AS details,
                     '{run_id}' AS run_id, now() AS scored_at
              FROM raw_records r WHERE r.record_id IN ({_kept_sql(dedup_run)})"""
    return sql, rules.sha256[:16]


def _sql_scorer_burst(cfg: FilterConfig, run_id: str, dedup_run: str) -> tuple[str, str]:
    # Images of the occurrence: every usable media record ingest kept for it, kept by dedup or not (the
    # paper counts the occurrence's images). Scored for the camera-trap images only.
    sql = f"""WITH per AS (
                SELECT record_id, count(*) OVER (PARTITION BY source, coalesce(occurrence_id, record_id)) AS n
                FROM raw_records WHERE drop_reason IS NULL)
              SELECT per.record_id, 'burst' AS scorer, 'sql' AS model, 'v1' AS model_version,
                     per.n::DOUBLE AS score, 'camera_trap' AS label, json_object('images', per.n) AS details,
                     '{run_id}' AS run_id, now() AS scored_at
              FROM per JOIN filter_scores t ON t.record_id = per.record_id AND t.scorer = 'image_type'
              WHERE t.label = 'camera_trap' AND per.record_id IN ({_kept_sql(dedup_run)})"""
    return sql, "v1"


SQL_SCORERS: dict[str, Callable[[FilterConfig, str, str], tuple[str, str]]] = {
    "image_type": _sql_scorer_image_type,
    "burst": _sql_scorer_burst,
}
assert set(SQL_SCORERS) | set(IMAGE_SCORERS) == set(FILTER_SCORERS)


def _faces_args(catalog: Catalog, cfg: FilterConfig) -> tuple[dict[str, Any], str]:
    require_facenet()  # a clear error here, not one per unit
    return {"faces": asdict(cfg.faces), "device": cfg.device}, face_model_version(cfg.faces)


def _museum_args(catalog: Catalog, cfg: FilterConfig) -> tuple[dict[str, Any], str]:
    support = load_support(catalog.home, cfg.museum.support)
    model_path, _ = resolve_model(catalog, cfg.museum.model)
    if Path(model_path).resolve() != Path(support.model_path).resolve() and model_path != support.model_path:
        raise ValueError(
            f"support set {cfg.museum.support!r} was built with {support.model_path}, not {model_path}: "
            f"centroids only mean something in the space of the model that made them; rebuild it with "
            f"`tol filter build-support FOLDER --name {cfg.museum.support} --model {cfg.museum.model}`"
        )
    return {"home": str(catalog.home), "support": cfg.museum.support, "device": cfg.device}, support.version


# What a worker needs to build each image scorer (plain JSON), and the model version its rows will carry;
# checked in the driver, so a missing package or support set is one clear error before any unit runs.
SCORER_ARGS: dict[str, Callable[[Catalog, FilterConfig], tuple[dict[str, Any], str]]] = {
    "faces": _faces_args,
    "museum_category": _museum_args,
}
assert set(SCORER_ARGS) == set(IMAGE_SCORERS)


_SCORERS_IN_PROCESS: dict[str, Any] = {}


def _scorer_for(scorer: str, args: dict[str, Any], threads: int):
    import torch

    # Each worker takes its share of the cores: torch's default (all of them, in every worker) makes the
    # workers fight over the cores (measured on 2 cores, faces over 957 demo images with 2 workers: 106 s
    # with 2 threads each, 18 s with 1).
    torch.set_num_threads(threads)
    key = json.dumps([scorer, args], sort_keys=True)
    if key not in _SCORERS_IN_PROCESS:
        _SCORERS_IN_PROCESS[key] = IMAGE_SCORERS[scorer](args)
    return _SCORERS_IN_PROCESS[key]


def score_unit(unit: Unit) -> pa.Table:
    """One work unit: score rows [start, start + n) of the plan and write them as one lake part. An image
    that does not decode is a row with label `unreadable` (recorded, not skipped)."""
    rows = read_rows(unit["plan"], unit["start"], unit["n"]).to_pylist()
    home = Path(unit["home"])
    blobs = read_image_blobs(home, [(r["blob"], r["blob_offset"], r["bytes"]) for r in rows])
    scorer = _scorer_for(unit["scorer"], unit["scorer_args"], int(unit["threads"]))
    out: dict[str, list] = {f.name: [] for f in FILTER_SCORES}
    errors = 0
    now = datetime.now(UTC)
    batch_size = int(unit["batch_size"])
    for i in range(0, len(rows), batch_size):
        batch_rows, images, bad = rows[i : i + batch_size], [], []
        for r, data in zip(batch_rows, blobs[i : i + batch_size], strict=True):
            try:
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            except OSError as exc:
                bad.append((r, f"{type(exc).__name__}: {exc}"))
                images.append(None)
        good = [img for img in images if img is not None]
        scored = iter(scorer.score_batch(good) if good else [])
        bad_by_id = {r["record_id"]: msg for r, msg in bad}
        for r, img in zip(batch_rows, images, strict=True):
            if img is None:
                errors += 1
                s_score, s_label, s_details = None, "unreadable", {"error": bad_by_id[r["record_id"]]}
            else:
                s = next(scored)
                s_score, s_label, s_details = s.score, s.label, s.details
            for key, value in (
                ("record_id", r["record_id"]),
                ("scorer", unit["scorer"]),
                ("model", scorer.model),
                ("model_version", unit["model_version"]),
                ("score", s_score),
                ("label", s_label),
                ("details", details_json(s_details)),
                ("run_id", unit["run_id"]),
                ("scored_at", now),
            ):
                out[key].append(value)
    write_part(
        home / "lake",
        "filter_scores_history",
        pa.Table.from_pydict(out, schema=FILTER_SCORES),
        partition={"scorer": unit["scorer"], "run": unit["run_id"]},
        part=unit["part"],
    )
    return pa.table({"scorer": [unit["scorer"]], "n": [len(rows)], "errors": [errors]}, schema=UNIT_RESULT)


def run_filter(
    catalog: Catalog,
    cfg: FilterConfig,
    dedup_run: str,
    *,
    executor: ExecutorConfig = LOCAL,
) -> dict[str, Any]:
    """Score the images `dedup_run` kept with `cfg.scorers`; returns the run summary (scores per scorer and
    label in `details`)."""
    with StageRun(catalog, "filter", config={**asdict(cfg), "dedup_run": dedup_run}) as run:
        with catalog.connect() as con:
            run.n_in = fetch_first(con, f"SELECT count(*) FROM ({_kept_sql(dedup_run)})")[0]
        scored: dict[str, int] = {}
        for scorer in cfg.scorers:
            if scorer in SQL_SCORERS:
                sql, _ = SQL_SCORERS[scorer](cfg, run.run_id, dedup_run)
                with run.timed(scorer):
                    scored[scorer] = catalog.write_part_from_query(
                        "filter_scores_history",
                        sql,
                        partition={"scorer": scorer, "run": run.run_id},
                        part="all",
                    )
                log.info("filter %s: %d images scored", scorer, scored[scorer])
                continue
            args, model_version = SCORER_ARGS[scorer](catalog, cfg)
            plan = catalog.work_dir(run.run_id) / f"plan-{scorer}.parquet"
            again = (
                ""
                if cfg.rescore
                else f"""AND k.record_id NOT IN (
                SELECT record_id FROM filter_scores_history WHERE scorer = '{scorer}'
                AND model_version = '{model_version.replace("'", "''")}')"""
            )
            n = catalog.export_parquet(
                f"""SELECT k.record_id, l.blob, l.blob_offset, l.bytes
                    FROM ({_kept_sql(dedup_run)}) k JOIN image_locations l USING (record_id)
                    LEFT JOIN filter_scores t ON t.record_id = k.record_id AND t.scorer = 'image_type'
                    WHERE {DOMAINS[scorer]} {again} ORDER BY l.blob, l.blob_offset""",
                plan,
                row_group_rows=cfg.partition_rows,
            )
            units = [
                {
                    "home": str(catalog.home),
                    "plan": str(plan),
                    "start": start,
                    "n": min(cfg.partition_rows, n - start),
                    "scorer": scorer,
                    "scorer_args": args,
                    "model_version": model_version,
                    "batch_size": cfg.batch_size,
                    "threads": max(1, (os.cpu_count() or 1) // executor.workers),
                    "run_id": run.run_id,
                    "part": f"u{start // cfg.partition_rows:06d}",
                }
                for start in range(0, n, cfg.partition_rows)
            ]
            log.info("filter %s: %d images to score in %d units (%s)", scorer, n, len(units), model_version)
            done = errors = 0
            with run.timed(scorer):
                for _, table in executor.build().run_units(score_unit, units):
                    row = table.to_pylist()[0]
                    done += row["n"]
                    errors += row["errors"]
                    log.info("filter %s: %d of %d images scored", scorer, done, n)
            if errors:
                run.error(f"{scorer}:unreadable", errors)
            scored[scorer] = done
        run.n_out = sum(scored.values())
        with catalog.connect() as con:
            labels = con.execute(
                f"""SELECT scorer, coalesce(label, 'None'), count(*) FROM filter_scores
                    WHERE record_id IN ({_kept_sql(dedup_run)}) GROUP BY ALL ORDER BY ALL"""
            ).fetchall()
        per: dict[str, dict[str, int]] = {}
        for scorer, label, count in labels:
            per.setdefault(scorer, {})[label] = count
        run.details.update(dedup_run=dedup_run, scored_now=scored, labels=per)
    return run.summary()


def latest_filter_run(catalog: Catalog, dedup_run: str, scorers: set[str]) -> str:
    """The latest succeeded filter run over `dedup_run` that ran every one of `scorers` (a version's rules
    need their scores for every sample they cover); a clear error when there is none."""
    for run in succeeded_runs(catalog, "filter"):
        if run.config.get("dedup_run") == dedup_run and scorers <= set(run.config.get("scorers") or ()):
            return run.run_id
    need = " ".join(f"--scorer {s}" for s in sorted(scorers | {"image_type"}))
    raise LookupError(
        f"no filter run scored the images of dedup run {dedup_run} with {', '.join(sorted(scorers))}: "
        f"run `tol filter run {need}` first"
    )
