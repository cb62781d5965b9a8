"""Lake compaction: many small parts of a lake table merged into few parts of bounded size.

Fetch writes one part per work unit (1,024 images by default), so at 214 M images the image table would
be 210 k files, and every query over a lake view lists and opens each one (DuckDB reads every part's
footer: about 0.1 ms a part, 1 s at 10 M records, 25 s at 214 M). Compaction merges the small parts of
each partition folder into parts of up to `target_rows` rows, sorted by `record_id` in row groups of
65,536 (point lookups keep skipping row groups).

Readers are never disturbed, through the catalog table `lake_compacted_parts`, which every lake view
consults when a query binds it (or as a `tol sql` snapshot copied it):

1. a merged part is written as `compact-<run>-<id>.parquet` (a temporary name, then a rename); the views
   read a `compact-*` part only when the table lists it `live`, so nobody sees it yet;
2. its row count is checked against its inputs;
3. one catalog transaction swaps the sets: the merged part is listed `live`, its inputs `retired`.

A query sees either the small parts or the merged one, never both and never neither. Retired files stay on
disk for `grace_seconds`, so a query that bound the old parts before the swap still reads them; a later
compaction (under the `compact` lock) deletes them, and any `compact-*` file that a killed compaction wrote
but never listed. Writers are not held back: the parts a compaction merges are finished files, and parts
written while it runs are simply not among them."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalog import COMPACTED_PREFIX, Catalog, duckdb_config, parts_select
from warehouse.lake import export_part
from warehouse.schemas import LAKE_TABLES

log = logging.getLogger("tol.compact")

LIVE, RETIRED = "live", "retired"  # the states of a `lake_compacted_parts` row


@dataclass(frozen=True)
class CompactionConfig:
    """When a partition folder is compacted and into what.

    A part with fewer than `small_part_rows` rows is small; a folder holding `min_small_parts` small parts or
    more has them merged, in name order, into parts of at most `target_rows` rows. Large parts are left
    alone, so a full merged part is never rewritten by a later compaction."""

    tables: tuple[str, ...] = field(  # empty: every one
        default=(),
        metadata={"help": "a lake table (default: all)", "flag": "--table", "choices": LAKE_TABLES},
    )
    small_part_rows: int = field(default=262_144, metadata={"help": "a part with fewer rows is small"})
    target_rows: int = field(default=1_048_576, metadata={"help": "rows of a merged part, at most"})
    min_small_parts: int = field(
        default=8, metadata={"help": "compact a folder once it holds this many small parts"}
    )
    grace_seconds: float = field(
        default=3600.0,
        metadata={
            "help": "seconds replaced parts stay readable for running queries (0: delete them at once)",
            "flag": "--grace",
        },
    )

    def __post_init__(self) -> None:
        unknown = [t for t in self.tables if t not in LAKE_TABLES]
        if unknown:
            raise ValueError(f"no lake table {', '.join(unknown)}; known: {', '.join(LAKE_TABLES)}")
        if self.small_part_rows < 1 or self.target_rows < self.small_part_rows:
            raise ValueError("need 1 <= small_part_rows <= target_rows")
        if self.min_small_parts < 2:
            raise ValueError(f"min_small_parts must be >= 2, not {self.min_small_parts}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, not {self.grace_seconds}")


@dataclass(frozen=True)
class Part:
    rel: str  # relative to the home, as `lake_compacted_parts.path` stores it
    rows: int


def listed_parts(catalog: Catalog) -> dict[str, tuple[str, datetime]]:
    """Every part compaction wrote or retired: path -> (state, since)."""
    with catalog.connect(read_only=True) as con:
        rows = con.execute("SELECT path, state, since FROM lake_compacted_parts").fetchall()
    return {path: (state, since) for path, state, since in rows}


def _expired(
    listed: dict[str, tuple[str, datetime]], grace_seconds: float, now: datetime | None
) -> list[str]:
    """The retired parts hidden for longer than `grace_seconds`."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace_seconds)
    return [rel for rel, (state, since) in listed.items() if state == RETIRED and since <= cutoff]


def _unlisted(catalog: Catalog, table: str, listed: dict[str, tuple[str, datetime]]) -> Iterator[Path]:
    """The `compact-*` parts of `table` that no row lists: written by a compaction killed before its swap."""
    for path in catalog.home.glob(LAKE_TABLES[table].pattern):
        if path.name.startswith(COMPACTED_PREFIX) and path.relative_to(catalog.home).as_posix() not in listed:
            yield path


def sweep(catalog: Catalog, grace_seconds: float, now: datetime | None = None) -> int:
    """Delete the retired parts hidden for longer than `grace_seconds` (the file first, then its row: a kill
    in between leaves a listed row without a file, which the next sweep forgets); returns how many."""
    gone = _expired(listed_parts(catalog), grace_seconds, now)
    for rel in gone:
        (catalog.home / rel).unlink(missing_ok=True)
    if gone:
        with catalog.connect() as con:
            con.executemany("DELETE FROM lake_compacted_parts WHERE path = ?", [[p] for p in gone])
    return len(gone)


def _visible(catalog: Catalog, table: str, listed: dict[str, tuple[str, datetime]]) -> dict[Path, list[Part]]:
    # The views' rule (`warehouse.catalog._source_select`): listed live, or not a compaction's and not retired.
    out: dict[Path, list[Part]] = defaultdict(list)
    for path in sorted(catalog.home.glob(LAKE_TABLES[table].pattern)):
        rel = path.relative_to(catalog.home).as_posix()
        state = listed.get(rel, (None, None))[0]
        if state == LIVE or (state is None and not path.name.startswith(COMPACTED_PREFIX)):
            out[path.parent].append(Part(rel, pq.read_metadata(path).num_rows))
    return out


def visible_parts(catalog: Catalog, table: str) -> dict[Path, list[Part]]:
    """The parts of `table` a query reads now, by partition folder, each with its row count (from its
    footer)."""
    return _visible(catalog, table, listed_parts(catalog))


def remove_unlisted(catalog: Catalog, table: str) -> int:
    """Delete the `compact-*` parts of `table` that no row lists (written by a compaction killed before its
    swap); the caller holds the `compact` lock, so no compaction is writing one now."""
    n = 0
    for path in _unlisted(catalog, table, listed_parts(catalog)):
        log.info("removing %s: written by a compaction that did not finish", path)
        path.unlink(missing_ok=True)
        n += 1
    return n


def plan_groups(parts: list[Part], cfg: CompactionConfig) -> list[list[Part]]:
    """The merges of one folder: its small parts in name order, cut into runs of at most `target_rows` rows;
    nothing when it holds fewer than `min_small_parts` small parts. A run of one part is no merge."""
    small = [p for p in parts if p.rows < cfg.small_part_rows]
    if len(small) < cfg.min_small_parts:
        return []
    groups: list[list[Part]] = [[]]
    rows = 0
    for part in small:
        if groups[-1] and rows + part.rows > cfg.target_rows:
            groups.append([])
            rows = 0
        groups[-1].append(part)
        rows += part.rows
    return [g for g in groups if len(g) > 1]


def merge_unit(unit: dict[str, Any]) -> pa.Table:
    """One merge, a work unit run by an executor's worker: the parts `unit["parts"]` (paths relative to
    `unit["home"]`) of the lake table `unit["table"]` written as the part `unit["name"]` of their folder, by
    the worker's own DuckDB (not a catalog connection: the merge reads only Parquet). Nobody reads the part
    until the driver's `swap`. Returns its path (relative to the home) and row count."""
    home, table = Path(unit["home"]), unit["table"]
    spec = LAKE_TABLES[table]
    folder = (home / unit["parts"][0]).parent
    partition = dict(seg.split("=", 1) for seg in folder.relative_to(home / "lake" / spec.folder).parts)
    files = ", ".join("'" + str(home / p).replace("'", "''") + "'" for p in unit["parts"])
    sql = parts_select(f"[{files}]", spec.schema)
    con = duckdb.connect(config=duckdb_config(home))
    try:
        target = export_part(con, home / "lake", table, sql, partition=partition, part=unit["name"])
    finally:
        con.close()
    return pa.table(
        {"path": [target.relative_to(home).as_posix()], "rows": [pq.read_metadata(target).num_rows]}
    )


def swap(catalog: Catalog, table: str, merged: str, group: list[Part]) -> None:
    """List `merged` live and its inputs retired, in one transaction."""
    now = datetime.now(UTC)
    rows = sum(p.rows for p in group)
    with catalog.connect() as con:
        con.execute("BEGIN TRANSACTION")
        try:
            # An input may be an earlier compaction's (small) part: it goes from live to retired.
            con.executemany("DELETE FROM lake_compacted_parts WHERE path = ?", [[p.rel] for p in group])
            con.executemany(
                "INSERT INTO lake_compacted_parts (path, table_name, state, rows, since, replaced_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [[merged, table, LIVE, rows, now, None]]
                + [[p.rel, table, RETIRED, p.rows, now, merged] for p in group],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def compaction_due(catalog: Catalog, cfg: CompactionConfig, now: datetime | None = None) -> bool:
    """Whether `run_compaction(cfg)` would merge or delete anything; a look without the lock, so that a stage
    ending (fetch) starts a `compact` run only when there is work for one."""
    listed = listed_parts(catalog)
    if _expired(listed, cfg.grace_seconds, now):
        return True
    for table in cfg.tables or tuple(LAKE_TABLES):
        if next(_unlisted(catalog, table, listed), None) is not None:
            return True
        if any(plan_groups(parts, cfg) for parts in _visible(catalog, table, listed).values()):
            return True
    return False
