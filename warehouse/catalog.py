"""The DuckDB catalog: versioned migrations, lake Parquet registered as views, small tables stored inline."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.contracts import DROP_REASONS, check_name
from warehouse.lake import PART_ROW_GROUP_ROWS, part_path, typed_select, write_part
from warehouse.locks import mark_interrupted
from warehouse.schemas import BUILD_PLAN, LAKE_TABLES, duckdb_type
from warehouse.views import register_history_views

# Each migration is applied once, in order, inside a transaction; never edit an applied one, append.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "core tables",
        """
        CREATE TABLE stage_runs (
            run_id VARCHAR PRIMARY KEY, stage VARCHAR NOT NULL, status VARCHAR NOT NULL,
            config JSON, code_version VARCHAR, n_in BIGINT, n_out BIGINT, n_dropped BIGINT,
            dropped_by_reason JSON, errors JSON, seconds DOUBLE,
            started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, message VARCHAR, details JSON);
        CREATE TABLE taxa (
            taxon_id VARCHAR, kingdom VARCHAR, phylum VARCHAR, class VARCHAR, "order" VARCHAR,
            family VARCHAR, genus VARCHAR, species VARCHAR, scientific_name VARCHAR, taxon_rank VARCHAR,
            common_name VARCHAR, common_name_rank VARCHAR, backbone_version VARCHAR,
            PRIMARY KEY (taxon_id, backbone_version));
        CREATE TABLE backbones (
            backbone_version VARCHAR PRIMARY KEY, path VARCHAR, n_taxa BIGINT, n_vernacular BIGINT,
            loaded_at TIMESTAMPTZ);
        CREATE TABLE dataset_versions (
            version VARCHAR PRIMARY KEY, created_at TIMESTAMPTZ, filters VARCHAR, seed BIGINT,
            dedup_run_id VARCHAR, resolve_run_id VARCHAR, n_samples BIGINT, n_train BIGINT, n_val BIGINT,
            n_shards BIGINT, path VARCHAR, manifest JSON, code_version VARCHAR);
        CREATE TABLE shard_samples (
            version VARCHAR, split VARCHAR, shard VARCHAR, key VARCHAR, record_id VARCHAR, taxon_id VARCHAR);
        CREATE TABLE training_runs (
            run_id VARCHAR PRIMARY KEY, version VARCHAR, config JSON, status VARCHAR, steps BIGINT,
            checkpoint VARCHAR, export_path VARCHAR, metrics JSON,
            started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ);
        CREATE TABLE ingest_checkpoints (
            source VARCHAR, query_key VARCHAR, checkpoint JSON, complete BOOLEAN, run_id VARCHAR,
            updated_at TIMESTAMPTZ, PRIMARY KEY (source, query_key));
        CREATE TABLE eval_results (
            run_id VARCHAR, model VARCHAR, task VARCHAR, metric VARCHAR, value DOUBLE, n BIGINT,
            details JSON, created_at TIMESTAMPTZ);
        """,
    ),
    (
        2,
        "run owners",
        # Who runs a stage (pid, host) and the lock it holds: a `running` row whose lock is free is a dead run.
        """
        ALTER TABLE stage_runs ADD COLUMN pid BIGINT;
        ALTER TABLE stage_runs ADD COLUMN host VARCHAR;
        ALTER TABLE stage_runs ADD COLUMN lock VARCHAR;
        """,
    ),
    (
        3,
        "explicit lineage",
        # Which backbone a version's names were resolved against (resolve_run_id is now filled too).
        "ALTER TABLE dataset_versions ADD COLUMN backbone_version VARCHAR;",
    ),
    (
        4,
        "recipes",
        # The corpus recipe that drove a stage run: its text once per hash, its hash on every run.
        """
        CREATE TABLE recipes (
            recipe_sha256 VARCHAR PRIMARY KEY, name VARCHAR, path VARCHAR, text VARCHAR,
            first_used_at TIMESTAMPTZ);
        ALTER TABLE stage_runs ADD COLUMN recipe_sha256 VARCHAR;
        """,
    ),
    (
        5,
        "shard samples from build plans",
        # `shard_samples` becomes a view over each version's build plan (`plan.parquet`), so the catalog
        # file (and every `tol sql` snapshot of it) stops growing with each version's samples. The rows of
        # versions built before plans existed stay here; `retire_stored_samples` drops those a plan covers.
        "ALTER TABLE shard_samples RENAME TO shard_samples_stored;",
    ),
    (
        6,
        "lake compaction",
        # The parts compaction wrote (`live`) and those it replaced (`retired`, deleted once their grace has
        # passed); see `warehouse.compaction`. Every lake view reads a `compact-*` part only when it is listed
        # live here and leaves out retired ones.
        """
        CREATE TABLE lake_compacted_parts (
            path VARCHAR PRIMARY KEY, table_name VARCHAR NOT NULL, state VARCHAR NOT NULL,
            rows BIGINT, since TIMESTAMPTZ NOT NULL, replaced_by VARCHAR);
        """,
    ),
    (
        7,
        "takedowns",
        # Requests to take records down (a rights holder, a licence change): every version built afterwards
        # leaves them out and counts them; a re-ingest of the record changes nothing here.
        """
        CREATE TABLE takedowns (
            request_id VARCHAR NOT NULL, record_id VARCHAR NOT NULL, reason VARCHAR NOT NULL,
            requested_by VARCHAR, requested_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (request_id, record_id));
        """,
    ),
]

log = logging.getLogger("tol.catalog")


def catalog_wait_default() -> float:
    """Seconds a connection waits for a catalog another process holds: `TOL_CATALOG_WAIT`, default 600."""
    return float(os.environ.get("TOL_CATALOG_WAIT") or 600)


class CatalogBusyError(RuntimeError):
    """The catalog stayed locked by another process for longer than the allowed wait."""


def _is_lock_conflict(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def connect_with_retry(
    path: Path, *, read_only: bool = False, wait: float | None = None
) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, waiting with jittered back-off while another process holds the file.

    DuckDB lets one process write or several read, never both at once, so every command meets the others'
    short connections; it waits for them instead of failing, up to `wait` seconds (CatalogBusyError after)."""
    config = duckdb_config(path.parent)
    return _waiting_for_lock(
        lambda: duckdb.connect(str(path), read_only=read_only, config=config), path, wait
    )


DEFAULT_DUCKDB_MEMORY = "256MB"


def duckdb_config(home: Path) -> dict[str, str]:
    """Every catalog connection's DuckDB settings: a memory limit (`TOL_DUCKDB_MEMORY`, default 256MB) with
    spilling to `work/duckdb-spill` under the home, so a sort or join over the whole corpus costs disk, not a
    process that grows with the corpus (DuckDB's own default is 80% of the machine's memory). A stage's sorts
    and joins fill whatever cap they get before they spill, so the driver's peak is about that cap plus the
    interpreter (200-300 MB): at 1 M records, resolve peaked at 712 MB under 512MB and at 497 MB under 256MB,
    for 3.1 s against 4.3 s. A driver with memory to spare sets more."""
    spill = home / "work" / "duckdb-spill"
    # DuckDB creates the spill folder itself, but not its parents: a home without `work/` could not spill.
    spill.parent.mkdir(parents=True, exist_ok=True)
    return {
        "memory_limit": os.environ.get("TOL_DUCKDB_MEMORY") or DEFAULT_DUCKDB_MEMORY,
        "temp_directory": str(spill),
    }


def _waiting_for_lock(open_fn, path: Path, wait: float | None):
    wait = catalog_wait_default() if wait is None else wait
    t0 = time.monotonic()
    delay, told = 0.02, False
    while True:
        try:
            return open_fn()
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc):
                raise
            waited = time.monotonic() - t0
            if waited >= wait:
                raise CatalogBusyError(
                    f"the catalog {path} stayed locked by another process for {waited:.0f} s: "
                    f"{' '.join(str(exc).split())[:300]} (TOL_CATALOG_WAIT sets the wait)"
                ) from exc
            if not told and waited > 2:
                log.info("catalog busy (another command is using it); waiting")
                told = True
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)


@dataclass(frozen=True)
class Catalog:
    """A home folder: `catalog.duckdb`, `lake/`, `shards/`, `runs/`."""

    home: Path

    @property
    def db_path(self) -> Path:
        return self.home / "catalog.duckdb"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def shards(self) -> Path:
        return self.home / "shards"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    def work_dir(self, run_id: str) -> Path:
        """A stage run's scratch folder (`work/<run_id>`): inputs handed to its workers by reference."""
        return self.home / "work" / check_name("run", run_id)

    def export_parquet(
        self,
        sql: str,
        path: Path,
        params: list | None = None,
        row_group_rows: int = 8192,
        tables: dict[str, pa.Table] | None = None,
        *,
        sandbox: bool = False,
    ) -> int:
        """Write the result of `sql` (over the catalog, and `tables` registered by name) to a Parquet file
        atomically; DuckDB streams it, no rows pass through Python. Returns the row count. Small row groups
        let a worker read its range without the rest. With `sandbox` (for SQL holding a user's text, such as
        `shard --where`), the connection can read only the home's data folders and write only the target's
        folder (`lock_down`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        target = str(tmp).replace("'", "''")
        options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_rows)}"
        with self.connect(read_only=True) as con:
            for name, table in (tables or {}).items():
                con.register(name, table)
            if sandbox:
                lock_down(con, self.home, writable=(tmp.parent,))
            con.execute(f"COPY ({sql}) TO '{target}' ({options})", params or [])
        os.replace(tmp, path)
        return pq.read_metadata(path).num_rows

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection with the lake views refreshed (DuckDB allows one writer process).

        A read-only one cannot refresh them: if they are stale (built for another folder, as when the home
        was moved or copied, or before a lake table's first part), a short write connection rebuilds them
        first."""
        con = connect_with_retry(self.db_path, read_only=read_only)
        if read_only and _stored_view(con, "state") != _views_state(self.home):
            con.close()
            writer = connect_with_retry(self.db_path)
            try:
                with schema_lock(self.db_path):
                    register_lake_views(writer, self.home)
            finally:
                writer.close()
            con = connect_with_retry(self.db_path, read_only=True)
        try:
            if not read_only:
                with schema_lock(self.db_path):
                    register_lake_views(con, self.home)
            yield con
        finally:
            con.close()

    @contextmanager
    def snapshot(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory copy of the catalog (its small tables and its views), for reads of any length.

        The file is held, shared like any reader's, only while its tables are copied (about 0.1 s for the
        demo's catalog; `bench/bench_scale.py` measures it at each size), so a long query never holds a stage
        back; the views read the lake's Parquet parts live. Writes to a snapshot change nothing: callers
        refuse them (see `read_only_statement`)."""
        with self.connect(read_only=True):
            pass  # stale views (a moved home, a table's first part) are rebuilt first
        con = duckdb.connect(config=duckdb_config(self.home))
        try:
            src = str(self.db_path).replace("'", "''")
            _waiting_for_lock(
                lambda: con.execute(f"ATTACH '{src}' AS catalog_file (READ_ONLY)"), self.db_path, None
            )
            try:
                con.execute("ATTACH ':memory:' AS snapshot")
                con.execute("COPY FROM DATABASE catalog_file TO snapshot")
            finally:
                con.execute("DETACH catalog_file")
            con.execute("USE snapshot")
            yield con
        finally:
            con.close()

    def write_part(self, table: str, data: pa.Table, *, partition: dict[str, str], part: str) -> Path:
        """Write one Parquet part of a lake table (see `warehouse.lake.write_part`)."""
        return write_part(self.lake, table, data, partition=partition, part=part)

    def write_part_from_query(
        self,
        table: str,
        sql: str,
        *,
        partition: dict[str, str],
        part: str,
        tables: dict[str, pa.Table] | None = None,
    ) -> int:
        """Write the rows of `sql` as one part of a lake table, by DuckDB (the rows never pass through
        Python); each column of the table's schema is taken by name and cast to its type (a missing one is
        an error). Returns the row count."""
        path = part_path(self.lake, table, partition, part)  # refuses an unknown table or partition
        return self.export_parquet(
            typed_select(table, sql), path, row_group_rows=PART_ROW_GROUP_ROWS, tables=tables
        )

    def query_arrow(self, sql: str, params: list | None = None) -> pa.Table:
        with self.connect() as con:
            return con.sql(sql, params=params or None).to_arrow_table()


def lock_down(con: duckdb.DuckDBPyConnection, home: Path, writable: tuple[Path, ...] = ()) -> None:
    """Make `con` safe for SQL that a user typed: DuckDB's file access is limited to the home's lake and
    shard plans (what the views read), its spill folder and `writable`; no other file, no ATTACH, no
    extension, no COPY elsewhere; and the configuration is locked, so the query cannot turn any of it back
    on. The connection is not reusable for ordinary work afterwards (its settings are frozen)."""
    home = Path(home)
    folders = [home / "lake", home / "shards", home / "work" / "duckdb-spill", *writable]
    listed = ", ".join(_sql_str(str(Path(f).resolve()) + "/") for f in folders)
    con.execute(f"SET allowed_directories = [{listed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_expression(where: str, flag: str = "--where") -> str:
    """A user's filter (`shard --where`, `predict --within`, `takedown add --where`) must be one boolean
    expression over a selection's columns: it is parsed inside a SELECT, and anything that closes it (a `)`, a
    `;`, a comment swallowing the rest) is refused. The query then runs on a locked-down connection
    (`lock_down`): no file but the home's data."""
    probe = f"SELECT 1 FROM t WHERE ({where})"
    try:
        statements = duckdb.extract_statements(probe)
    except duckdb.Error as exc:
        raise ValueError(f"{flag} is not a SQL expression: {' '.join(str(exc).split())[:200]}") from None
    if (
        len(statements) != 1
        or statements[0].type != duckdb.StatementType.SELECT
        or any(tok in where for tok in (";", "--", "/*"))
        or not _balanced(where)
    ):
        raise ValueError(f"{flag} must be one expression over the selection's columns, not {where[:200]!r}")
    return where


def _balanced(text: str) -> bool:
    """Whether the parentheses outside string literals and quoted names balance, never closing early."""
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and quote is None


_READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}


def read_only_statement(sql: str) -> bool:
    """Whether every statement of `sql` is of a reading kind: SELECT (DESCRIBE, SHOW, SUMMARIZE), EXPLAIN or
    PRAGMA. A first, friendly check only: what makes `tol sql` read-only is the connection it runs on (an
    in-memory snapshot, locked down by `lock_down`), not this list."""
    statements = duckdb.extract_statements(sql)
    return bool(statements) and all(st.type in _READ_STATEMENTS for st in statements)


def open_catalog(home: str | Path) -> Catalog:
    """Create the home folder and DuckDB file if needed, apply pending migrations, register lake views."""
    home = Path(home).resolve()
    for sub in ("lake", "shards", "runs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    catalog = Catalog(home)
    con = connect_with_retry(catalog.db_path)
    try:
        with schema_lock(catalog.db_path):
            migrate(con, home)
            register_lake_views(con, home)
            mark_interrupted(con, home)  # runs whose process died, whatever command comes next
    finally:
        con.close()
    return catalog


_SCHEMA_LOCKS: dict[str, threading.Lock] = {}
_SCHEMA_LOCKS_GUARD = threading.Lock()


def schema_lock(db_path: Path) -> threading.Lock:
    """The lock this process takes to change a catalog file's schema (migrations, the lake views) or to
    close dead runs.

    DuckDB's file lock keeps other processes out, but the threads of one process (a flow's concurrent
    tasks) write through one database instance at once, and two transactions that both replace the same
    view or create the same table fail with a write-write conflict instead of waiting. Taken in that
    order (this lock inside an open connection), it cannot deadlock with the file lock."""
    key = str(Path(db_path).resolve())
    with _SCHEMA_LOCKS_GUARD:
        return _SCHEMA_LOCKS.setdefault(key, threading.Lock())


def migrate(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    """Apply pending migrations, and what one needs done beside its SQL (5: retire the stored samples that
    build plans now hold)."""
    if 5 in apply_migrations(con):
        retire_stored_samples(con, home)


def apply_migrations(con: duckdb.DuckDBPyConnection) -> list[int]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR,"
        " applied_at TIMESTAMPTZ DEFAULT now())"
    )
    applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    done = []
    for version, name, sql in MIGRATIONS:
        if version in applied:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        done.append(version)
    return done


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f'CAST(NULL AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema)
    return f"SELECT {cols} WHERE false"


def parts_select(files: str, schema: pa.Schema, where: str = "") -> str:
    """The rows of the Parquet parts `files` (a SQL glob string or list of them) with every column of `schema`.

    BY NAME with the typed empty table: every column of the schema is there, typed, even one that no part
    written yet holds (a column added since), so views that name it bind on an older home too."""
    return (
        f"SELECT * FROM read_parquet({files}, union_by_name = true, hive_partitioning = false){where}"
        f" UNION ALL BY NAME {_empty_select(schema)}"
    )


def _has_parts(home: Path, pattern: str) -> bool:
    """Whether any part matches: stops at the first (a listing of every part costs O(parts))."""
    return next(glob.iglob(str(home / pattern)), None) is not None


COMPACTED_PREFIX = "compact-"  # the names of the parts compaction writes (and only of those)


def _source_select(home: Path, pattern: str, schema: pa.Schema) -> str:
    if not _has_parts(home, pattern):
        return _empty_select(schema)
    # Compaction's parts are read by the catalog's word, against `lake_compacted_parts` as it stands when the
    # query binds the view (or as a snapshot copied it): a `compact-*` part only once it is listed live, the
    # parts it replaced no longer once they are listed retired. So a reader sees one set or the other.
    # (`warehouse.compaction.visible_parts` is the same rule, for the parts a compaction merges.)
    prefix = _sql_str(str(home) + "/")
    return parts_select(
        _sql_str(str(home / pattern)),
        schema,
        f" WHERE filename NOT IN (SELECT {prefix} || path FROM lake_compacted_parts WHERE state = 'retired')"
        f" AND (NOT starts_with(parse_filename(filename), '{COMPACTED_PREFIX}')"
        f" OR filename IN (SELECT {prefix} || path FROM lake_compacted_parts WHERE state = 'live'))",
    )


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


VIEWS_VERSION = 9  # bump when a view's SQL (here or in warehouse/views.py) changes (schemas and drop reasons are fingerprinted)


def _views_state(home: Path) -> str:
    """What the views depend on: the home, their definitions, and which lake tables have parts yet (an
    empty table is a typed empty view until its first part lands). Parts added later need no rebuild:
    the views read their folders by glob."""
    definitions = hashlib.sha1(
        json.dumps(
            [
                VIEWS_VERSION,
                {k: [v.pattern, str(v.schema)] for k, v in LAKE_TABLES.items()},
                list(DROP_REASONS),
            ]
        ).encode()
    ).hexdigest()[:12]
    filled = [name for name, spec in LAKE_TABLES.items() if _has_parts(home, spec.pattern)]
    return json.dumps([str(home), definitions, filled])


def _stored_view(con: duckdb.DuckDBPyConnection, column: str) -> str | None:
    try:
        return fetch_first(con, f"SELECT {column} FROM lake_views_home")[0]
    except duckdb.BinderException:  # built by an older version, without that column
        return None
    except duckdb.CatalogException:
        return None


def register_lake_views(con: duckdb.DuckDBPyConnection, home: Path, *, force: bool = False) -> None:
    """(Re)create the lake views unless they are built for this state already (so a connection costs the
    same at 10 k and 10 M records). History views hold every row ever written; the plain views the
    current state."""
    state = _views_state(home)
    if not force and _stored_view(con, "state") == state:
        return
    # The views read catalog tables too (`lake_compacted_parts`): a file that a command without `open_catalog`
    # (`tol sql`) meets first gets its migrations here.
    migrate(con, home)
    for name, spec in LAKE_TABLES.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {_source_select(home, spec.pattern, spec.schema)}")
    # Current state = latest row per key, and what one run stands for (`<view>_as_of(run)`): warehouse/views.py.
    register_history_views(con)
    reasons = ", ".join(
        "(" + ", ".join(_sql_str(v) for v in (key, r.stage, r.meaning)) + ")"
        for key, r in DROP_REASONS.items()
    )
    con.execute(f"CREATE OR REPLACE VIEW drop_reasons (reason, stage, meaning) AS VALUES {reasons}")
    con.execute(
        """CREATE OR REPLACE VIEW record_lineage AS
        SELECT r.record_id, r.source, r.source_id, r.dataset_key, r.license, r.media_url,
               s.taxon_id, s.match_type, t.kingdom, t.phylum, t.class, t."order", t.family, t.genus,
               t.species, t.scientific_name, t.common_name, i.status AS image_status, i.md5, i.phash,
               r.drop_reason, d.kept AS dedup_kept, d.reason AS dedup_reason, d.run_id AS dedup_run_id
        FROM raw_records r
        LEFT JOIN resolutions s USING (record_id)
        LEFT JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version
        LEFT JOIN images i USING (record_id)
        LEFT JOIN dedup_decisions d USING (record_id)"""
    )
    register_shard_samples(con, home)
    # Last: a registration that failed half-way is redone by the next connection.
    con.execute(
        f"CREATE OR REPLACE VIEW lake_views_home AS SELECT {_sql_str(str(home))} AS home, {_sql_str(state)} AS state"
    )


SHARD_SAMPLE_COLUMNS = ("version", "split", "shard", "key", "record_id", "taxon_id")


def _plans(con: duckdb.DuckDBPyConnection, home: Path) -> dict[str, Path]:
    """Each version's build plan that exists, by version (older versions' paths may be absolute)."""
    rows = con.execute("SELECT version, path FROM dataset_versions ORDER BY version").fetchall()
    return {
        version: home / path / BUILD_PLAN for version, path in rows if (home / path / BUILD_PLAN).exists()
    }


def register_shard_samples(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    """(Re)create `shard_samples`: one `read_parquet` of each version's plan, plus the stored rows of
    versions that have none. The version writer calls it in the transaction that switches a version, so
    the view and `dataset_versions` change together; it lists no folder, one `stat` per version."""
    cols = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in SHARD_SAMPLE_COLUMNS if c != "version")
    plans = _plans(con, home)
    stored = "SELECT " + ", ".join(SHARD_SAMPLE_COLUMNS) + " FROM shard_samples_stored"
    if plans:
        stored += f" WHERE version NOT IN ({', '.join(_sql_str(v) for v in plans)})"
    selects = [stored] + [
        f"SELECT {_sql_str(version)} AS version, {cols} FROM read_parquet({_sql_str(str(plan))})"
        for version, plan in plans.items()
    ]
    con.execute("CREATE OR REPLACE VIEW shard_samples AS " + "\nUNION ALL ".join(selects))


def retire_stored_samples(con: duckdb.DuckDBPyConnection, home: Path) -> int:
    """Delete the stored `shard_samples` rows of versions whose build plan holds them; returns how many
    versions. Run once, when migration 5 turns `shard_samples` into a view."""
    plans = _plans(con, home)
    for version in plans:
        con.execute("DELETE FROM shard_samples_stored WHERE version = ?", [version])
    if plans:
        log.info("shard_samples: %d versions now read from their build plans", len(plans))
    return len(plans)


def fetch_first(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
    """First row or None. Fetches the whole result: DuckDB 2 treats a half-read result as unfinished and
    refuses the next statement on the connection."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None
