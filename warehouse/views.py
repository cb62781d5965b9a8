"""The two readings of every history table: `current` (the latest row per key, what the plain view shows) and
`as_of(run)` (what one run stands for), written once here for every table and every reader.

A history table keeps every row ever written. Its current view picks the latest row per key. Its
`<view>_as_of(run)` table macro answers for one run, in one of two ways:
- by chain (resolutions, dedup decisions): an incremental run writes only what changed and lists in
  `stage_runs.details.chain` the runs it carried the rest from; the newest row per key along that chain;
- by time (raw records, images, filter scores): the newest row per key among the rows of runs of that stage
  that succeeded and started no later than the run (the run's own rows included).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from warehouse.schemas import IMAGES, RAW_RECORDS


@dataclass(frozen=True)
class HistoryView:
    view: str  # the current view's name; the macro is `<view>_as_of`
    history: str  # the lake table that holds every row
    keys: tuple[str, ...]  # one current row per key
    newest: str  # the ORDER BY that puts a key's newest row first
    as_of: str  # "chain" or "time"
    stage: str  # the stage whose runs write it
    columns: str = "*"
    where: str = ""  # rows the view and macro leave out (`kept IS NOT NULL` for dedup's tombstones)


def _cols(schema) -> str:
    return ", ".join(f'"{f.name}"' for f in schema)


HISTORY_VIEWS = (
    HistoryView("raw_records", "raw_records_history", ("record_id",), "ingested_at DESC, run_id DESC", "time",
                "ingest", _cols(RAW_RECORDS)),
    HistoryView("resolutions", "resolutions_history", ("record_id",), "run_id DESC", "chain", "resolve"),
    HistoryView("images", "images_history", ("record_id",), "fetched_at DESC, run_id DESC", "time", "fetch",
                _cols(IMAGES)),
    HistoryView("dedup_decisions", "dedup_decisions_history", ("record_id",), "run_id DESC", "chain", "dedup",
                where="kept IS NOT NULL"),
    HistoryView("filter_scores", "filter_scores_history", ("record_id", "scorer"), "scored_at DESC, run_id DESC",
                "time", "filter"),
)  # fmt: skip


def current(v: HistoryView, source: str | None = None) -> str:
    """SELECT of the latest row per key of `source` (default the whole history)."""
    where = f"WHERE {v.where}" if v.where else ""
    inner = f"""SELECT {v.columns} FROM {source or v.history}
        QUALIFY row_number() OVER (PARTITION BY {", ".join(v.keys)} ORDER BY {v.newest}) = 1"""
    return f"SELECT * FROM ({inner}) {where}" if where else inner


def as_of(v: HistoryView) -> str:
    """The body of `<view>_as_of(for_run)`: the rows the run stands for, one per key."""
    keys = ", ".join(f"h.{k}" for k in v.keys)
    if v.as_of == "chain":
        rows = f"""SELECT h.* FROM {v.history} h,
             (SELECT CASE WHEN len(c) > 0 THEN c ELSE [run_id] END AS chain
              FROM (SELECT run_id, json_extract_string(details, '$.chain[*]') AS c
                    FROM stage_runs WHERE run_id = for_run)) k
            WHERE list_contains(k.chain, h.run_id)
            QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY list_position(k.chain, h.run_id)) = 1"""
    else:
        newest = ", ".join(f"h.{part.strip()}" for part in v.newest.split(","))
        rows = f"""SELECT h.* FROM {v.history} h
            WHERE h.run_id = for_run OR h.run_id IN (
                SELECT r.run_id FROM stage_runs r, (SELECT started_at FROM stage_runs WHERE run_id = for_run) a
                WHERE r.stage = '{v.stage}' AND r.status = 'succeeded' AND r.started_at < a.started_at)
            QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {newest}) = 1"""
    where = f" WHERE {v.where}" if v.where else ""
    return f"SELECT {v.columns} FROM ({rows}){where}"


def register_history_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create every current view and `_as_of` macro. `dedup_decisions` is what the latest succeeded dedup
    run stands for (runs write only changes, so the latest row per record would mix runs' tombstones)."""
    for v in HISTORY_VIEWS:
        con.execute(f"CREATE OR REPLACE MACRO {v.view}_as_of(for_run) AS TABLE {as_of(v)}")
        if v.view == "dedup_decisions":
            con.execute(
                """CREATE OR REPLACE VIEW dedup_decisions AS SELECT * FROM dedup_decisions_as_of((
                    SELECT run_id FROM stage_runs WHERE stage = 'dedup' AND status = 'succeeded'
                    ORDER BY ended_at DESC, run_id DESC LIMIT 1))"""
            )
        else:
            con.execute(f"CREATE OR REPLACE VIEW {v.view} AS {current(v)}")
    # Where each record's current image lies; `warehouse.lake.read_image_blobs` reads the bytes.
    con.execute(
        """CREATE OR REPLACE VIEW image_locations AS
        SELECT record_id, blob, blob_offset, bytes FROM images_history WHERE status = 'ok'
        QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY fetched_at DESC, run_id DESC) = 1"""
    )
