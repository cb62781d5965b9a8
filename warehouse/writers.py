"""The catalog's writes to its stored tables, typed: stages call these and write no SQL DML of their own.
(`stage_runs` rows are written by `warehouse.stage_runs.StageRun`; lake Parquet by `Catalog.write_part`.)"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from warehouse.catalog import Catalog, fetch_first, register_shard_samples, schema_lock
from warehouse.lake import write_image_blob
from warehouse.schemas import TAXA

# --- fetch -------------------------------------------------------------------------------------------------


def write_images_part(catalog: Catalog, rows: pa.Table, *, run_id: str, source: str, part: str) -> None:
    """One fetch part, written by the worker that fetched it: the JPEGs of its ok rows into the image lake
    (one blob file), then the `images_history` rows pointing into it. A kill between the two leaves an
    unreferenced blob, never a row without its bytes."""
    jpegs = rows.column("jpeg").to_pylist()
    if any(jpegs):
        blob, offsets = write_image_blob(catalog.home, source, part, jpegs)
    else:
        blob, offsets = "", [None] * len(jpegs)
    now = datetime.now(UTC)
    n = rows.num_rows
    table = (
        rows.drop_columns(["jpeg"])
        .append_column("blob", pa.array([blob if o is not None else None for o in offsets], pa.string()))
        .append_column("blob_offset", pa.array(offsets, pa.int64()))
        .append_column("run_id", pa.array([run_id] * n, pa.string()))
        .append_column("fetched_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))
    )
    catalog.write_part("images_history", table, partition={"source": source}, part=part)


# --- ingest ------------------------------------------------------------------------------------------------


def load_checkpoint(catalog: Catalog, source: str, query_key: str) -> tuple[dict[str, Any], bool] | None:
    """The stored checkpoint of one source query and whether that run completed; None if never run."""
    with catalog.connect() as con:
        row = fetch_first(
            con,
            "SELECT checkpoint, complete FROM ingest_checkpoints WHERE source = ? AND query_key = ?",
            [source, query_key],
        )
    return None if row is None else (json.loads(row[0]), bool(row[1]))


def save_checkpoint(
    catalog: Catalog, source: str, query_key: str, checkpoint: dict[str, Any], complete: bool, run_id: str
) -> None:
    with catalog.connect() as con:
        con.execute(
            "INSERT OR REPLACE INTO ingest_checkpoints (source, query_key, checkpoint, complete, run_id,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            [source, query_key, json.dumps(checkpoint), complete, run_id, datetime.now(UTC)],
        )


# --- taxonomy ----------------------------------------------------------------------------------------------


def record_backbone(
    con: duckdb.DuckDBPyConnection, version: str, path: str, n_taxa: int, n_vernacular: int, rows: str
) -> int:
    """Store a backbone: its lineage rows (the relation `rows`, with the columns of `schemas.TAXA` but
    `backbone_version`) and its `backbones` row. Runs in the caller's transaction; returns the rows stored."""
    cols = [f.name for f in TAXA if f.name != "backbone_version"]
    quoted = ", ".join(f'"{c}"' for c in cols)
    con.execute(
        f"INSERT INTO taxa ({quoted}, backbone_version) SELECT {quoted}, ? FROM {rows}",
        [version],
    )
    n = fetch_first(con, "SELECT count(*) FROM taxa WHERE backbone_version = ?", [version])[0]
    con.execute(
        "INSERT INTO backbones (backbone_version, path, n_taxa, n_vernacular, loaded_at) VALUES (?, ?, ?, ?, ?)",
        [version, path, n_taxa, n_vernacular, datetime.now(UTC)],
    )
    return n


# --- shards ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetVersionRecord:
    """One `dataset_versions` row: what a version holds and exactly which runs it was built from."""

    version: str
    filters: str | None
    seed: int
    dedup_run_id: str
    resolve_run_id: str | None
    backbone_version: str | None
    n_samples: int
    n_train: int
    n_val: int
    n_shards: int
    path: str  # relative to the home: a home can be moved or copied
    manifest: dict[str, Any]
    code_version: str


def replace_version(catalog: Catalog, record: DatasetVersionRecord) -> None:
    """Make `record` the version of its name, in one transaction: before it the old version stands, after
    it the new, with `shard_samples` (a view over the versions' build plans) switched with it."""
    names = [f.name for f in fields(DatasetVersionRecord)]
    values = list(astuple(record))
    values[names.index("manifest")] = json.dumps(record.manifest, default=str)
    with catalog.connect() as con, schema_lock(catalog.db_path):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM dataset_versions WHERE version = ?", [record.version])
            con.execute("DELETE FROM shard_samples_stored WHERE version = ?", [record.version])
            con.execute(
                f"INSERT INTO dataset_versions ({', '.join(names)}, created_at)"
                f" VALUES ({', '.join('?' * len(names))}, ?)",
                [*values, datetime.now(UTC)],
            )
            register_shard_samples(con, catalog.home)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


# --- training ----------------------------------------------------------------------------------------------


def training_started(catalog: Catalog, run_id: str, version: str, config: dict[str, Any], steps: int) -> None:
    """Record a training run as running (a resumed run overwrites its own row)."""
    with catalog.connect() as con:
        con.execute(
            "INSERT OR REPLACE INTO training_runs (run_id, version, config, status, steps, started_at)"
            " VALUES (?, ?, ?, 'running', ?, ?)",
            [run_id, version, json.dumps(config), steps, datetime.now(UTC)],
        )


def training_succeeded(
    catalog: Catalog, run_id: str, checkpoint: str, export_path: str, metrics: dict[str, Any]
) -> None:
    with catalog.connect() as con:
        con.execute(
            "UPDATE training_runs SET status = 'succeeded', checkpoint = ?, export_path = ?, metrics = ?,"
            " ended_at = ? WHERE run_id = ?",
            [checkpoint, export_path, json.dumps(metrics), datetime.now(UTC), run_id],
        )


def training_ended(catalog: Catalog, run_id: str, status: str) -> None:
    """A run that did not succeed: `failed` or `interrupted`."""
    if status not in ("failed", "interrupted"):
        raise ValueError(f"training_ended takes failed or interrupted, not {status!r}")
    with catalog.connect() as con:
        con.execute(
            "UPDATE training_runs SET status = ?, ended_at = ? WHERE run_id = ?",
            [status, datetime.now(UTC), run_id],
        )


# --- evaluation --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalScore:
    run_id: str | None
    model: str
    task: str
    metric: str
    value: float
    n: int
    details: dict[str, Any]


def record_scores(catalog: Catalog, scores: list[EvalScore]) -> None:
    now = datetime.now(UTC)
    with catalog.connect() as con:
        con.executemany(
            "INSERT INTO eval_results (run_id, model, task, metric, value, n, details, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [s.run_id, s.model, s.task, s.metric, float(s.value), s.n, json.dumps(s.details), now]
                for s in scores
            ],
        )


# --- recipes -----------------------------------------------------------------------------------------------


def record_recipe(catalog: Catalog, sha256: str, name: str, path: str, text: str) -> None:
    """Store a recipe's text once per hash; stage runs it drives carry the hash (`stage_runs.driven_by`)."""
    with catalog.connect() as con:
        con.execute(
            "INSERT INTO recipes (recipe_sha256, name, path, text, first_used_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [sha256, name, path, text, datetime.now(UTC)],
        )


# --- takedowns ---------------------------------------------------------------------------------------------


def record_takedown(
    catalog: Catalog, request_id: str, record_ids: list[str], reason: str, requested_by: str | None
) -> int:
    """Store one takedown request over `record_ids` (who, when, why); returns the records it names."""
    now = datetime.now(UTC)
    with catalog.connect() as con:
        con.executemany(
            "INSERT INTO takedowns (request_id, record_id, reason, requested_by, requested_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [[request_id, r, reason, requested_by, now] for r in record_ids],
        )
    return len(record_ids)
