"""Dedup stage: decisions, not deletions. Separately runnable steps, set-wise in DuckDB:

1. leaks: training images within `leak_k` bits of pHash, within `pdq_leak_k` bits of PDQ (the paper's leak
   check: <= 10 of 256; needs images fetched with `--pdq`), or with equal MD5, of any evaluation image, and
   every record of a source id an id-listed benchmark names (Rare Species: EOL page ids) -> `eval_leak:<name>`;
2. exact: one keeper per MD5 of the original bytes -> `exact_duplicate`;
3. near: every pair within distance k of the 64-bit pHash (the exact multi-index search of
   `near_dup`, streamed from DuckDB in batches), connected components in SQL, one keeper per cluster.
Memory does not follow the corpus: ids, pairs and decisions stay in DuckDB (capped, spilling) and Parquet;
Python holds one batch of (ix, hash) at a time.
Keeper rule: source priority, then larger image, then earliest record. Degenerate hashes (near-constant
bits, from blank or uniform images) are flagged and never clustered.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etl.dedup.near_dup import (
    near_pairs,
    plan_layout,
    prefix_groups,
    prefix_order_sql,
    stream_pairs,
)
from etl.fetch.images import ImageConfig, process_image, require_pdq, tar_images
from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import SOURCES, check_name, is_image_name
from warehouse.lake import export_part
from warehouse.schemas import EVAL_HASHES, EVAL_IDS
from warehouse.stage_runs import StageRun, succeeded_runs


@dataclass(frozen=True)
class DedupConfig:
    # planted resize/re-encode variants sit at 0-4; distinct images at 20+ (measured on the sample world)
    near_k: int = field(default=6, metadata={"help": "pHash Hamming distance of a near duplicate (0-15)"})
    leak_k: int = field(default=8, metadata={"help": "pHash Hamming distance of an evaluation leak (0-15)"})
    source_priority: tuple[str, ...] = SOURCES
    degenerate_min_bits: int = 4  # hashes with fewer than this many 1-bits (or 0-bits) are degenerate
    eval_sets: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "an evaluation set to protect (repeatable)",
            "flag": "--eval",
            "metavar": "NAME=PATH",
        },
    )
    # The paper's leak check: PDQ within 10 of 256 bits (None: pHash and MD5 only). PDQ hashes of quality
    # below `pdq_min_quality` (flat or tiny images; Meta's guidance is 50) say little and are not compared.
    pdq_leak_k: int | None = field(
        default=None,
        metadata={
            "help": "also a PDQ leak check at this distance of 256 bits (the paper: 10; needs images fetched with --pdq)"
        },
    )
    pdq_min_quality: int = 50
    # Benchmarks listed by EOL page id: {name: file of page ids, one per line or a CSV column `page_id`}.
    eval_eol_pages: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "a benchmark listed by EOL page id (one per line, or a CSV `page_id` column): its pages' "
            "records are evaluation leaks (repeatable)",
            "metavar": "NAME=FILE",
        },
    )
    # A re-hash of an evaluation set that no longer holds every image its stored hashes do (a folder half
    # copied, a mount missing) is refused unless this is set: leaks of the dropped images would go unseen.
    replace_eval: bool = field(
        default=False, metadata={"help": "let an --eval set's new hashes drop images its stored hashes hold"}
    )

    def __post_init__(self) -> None:
        if self.pdq_leak_k is not None and not 0 <= self.pdq_leak_k <= 15:
            # 16 segments of 16 bits: a pair within k <= 15 agrees exactly on at least one of them.
            raise ValueError(
                f"pdq_leak_k is a Hamming distance between 256-bit PDQ hashes: 0 to 15, not {self.pdq_leak_k}"
            )
        for name in self.eval_eol_pages:
            check_name("evaluation set", name)
        for what, k in (("near_k", self.near_k), ("leak_k", self.leak_k)):
            # The exact band index splits the 64 bits into at most 16 segments, one more than k.
            if not 0 <= k <= 15:
                raise ValueError(f"{what} is a Hamming distance between 64-bit hashes: 0 to 15, not {k}")
        unknown = sorted(set(self.source_priority) - set(SOURCES))
        if unknown:
            raise ValueError(f"source_priority: unknown source(s) {', '.join(unknown)}")
        for name in self.eval_sets:
            # A set's name is a folder (lake/eval_hashes/set=NAME) and the tail of `eval_leak:NAME`.
            check_name("evaluation set", name)


def _shards(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if path.is_dir() and not (path / "metadata.csv").exists():
        return sorted(path.glob("*.tar"))
    return []


def eval_images(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every image in an evaluation set.

    Accepts a folder with `metadata.csv` (its `filepath` column), WebDataset shards (one `.tar`, or a folder
    of them; the image member of each sample), or a plain folder of image files, searched recursively.
    """
    meta = path / "metadata.csv"
    if meta.exists():
        with open(meta, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                yield row["filepath"], (path / row["filepath"]).read_bytes()
        return
    if shards := _shards(path):
        for shard in shards:
            for name, data in tar_images(shard):
                yield f"{shard.name}/{name}", data
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)):
        yield str(file.relative_to(path)), file.read_bytes()


def hash_eval_set(
    catalog: Catalog,
    name: str,
    path: str | Path,
    run_id: str,
    *,
    pdq: bool = False,
    replace_eval: bool = False,
) -> pa.Table:
    """Hash an evaluation set (see `eval_images`) the same way fetched images are hashed (PDQ too with
    `pdq`); stored per set, so later runs check against it without the folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation set {name}: {path} does not exist")
    rows: dict[str, list] = {f.name: [] for f in EVAL_HASHES}
    config = ImageConfig(min_side=1, encode=False, pdq=pdq)
    for rel, data in eval_images(path):
        img = process_image(data, config)
        for k, v in (
            ("eval_set", name),
            ("path", rel),
            ("md5", img.md5),
            ("phash", img.phash),
            ("run_id", run_id),
            ("pdq_hex", img.pdq_hex),
            ("pdq_quality", img.pdq_quality),
        ):
            rows[k].append(v)
    table = pa.Table.from_pydict(rows, schema=EVAL_HASHES)
    if not table.num_rows:
        raise ValueError(
            f"evaluation set {name}: {path} holds no images; refused (an empty or unmounted folder would "
            "replace the set's stored hashes with nothing, and its leaks would be kept for training)"
        )
    dropped = _dropped_eval_images(catalog, name, set(rows["path"]))
    if dropped and not replace_eval:
        shown = ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        raise ValueError(
            f"evaluation set {name}: {len(dropped)} of its stored images are not under {path} ({shown}); "
            "refused: pass --replace-eval to replace the set with what the folder holds now"
        )
    catalog.write_part("eval_hashes", table, partition={"set": name}, part="hashes")
    return table


def _dropped_eval_images(catalog: Catalog, name: str, paths: set[str]) -> list[str]:
    """The stored images of set `name` that `paths` no longer holds, sorted."""
    with catalog.connect() as con:
        stored = con.execute("SELECT DISTINCT path FROM eval_hashes WHERE eval_set = ?", [name]).fetchall()
    return sorted(p for (p,) in stored if p not in paths)


def read_ids(path: str | Path, column: str = "page_id") -> list[str]:
    """Ids from a file: one per line, or the `column` of a CSV with a header (blank lines and `#` comments
    are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} does not exist")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if lines and "," in lines[0]:
        rows = list(csv.DictReader(lines))
        if column not in (rows[0] if rows else {}):
            raise ValueError(f"{path}: a CSV of ids needs a `{column}` column")
        lines = [r[column].strip() for r in rows if r[column].strip()]
    if not lines:
        raise ValueError(f"{path}: no ids")
    return sorted(set(lines))


def store_eol_pages(catalog: Catalog, name: str, path: str | Path, run_id: str) -> int:
    """Store an id-listed benchmark's EOL page ids (`lake/eval_ids/set=NAME`), protected by later runs too."""
    ids = read_ids(path)
    table = pa.table(
        {
            "eval_set": [name] * len(ids),
            "source": ["eol"] * len(ids),
            "occurrence_id": ids,
            "run_id": [run_id] * len(ids),
        },
        schema=EVAL_IDS,
    )
    catalog.write_part("eval_ids", table, partition={"set": name}, part="ids")
    return len(ids)


log = logging.getLogger("tol.dedup")

# Rows per record batch read from DuckDB into the search: the search holds one batch (16 bytes a row) plus
# one run of equal prefix values.
_BATCH_ROWS = 1 << 20
_MAX_COMPONENT_ROUNDS = 200


def _hash_batches(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ix, phash) numpy batches of `sql`'s two columns, streamed from DuckDB (which spills its sort)."""
    for batch in con.sql(sql).to_arrow_reader(_BATCH_ROWS):
        yield batch.column(0).to_numpy(), batch.column(1).to_numpy()


class _PairSink:
    """Pairs found by the search, appended to a Parquet file in the run's work folder as they come (the
    search never holds the corpus's pairs); DuckDB reads the file back."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.schema, self.rows = path, schema, 0
        self._writer = pq.ParquetWriter(path, schema)

    def add(self, **columns: np.ndarray) -> None:
        if len(next(iter(columns.values()))):
            self._writer.write_table(pa.table(columns, schema=self.schema))
            self.rows += len(next(iter(columns.values())))

    def close(self) -> str:
        self._writer.close()
        return str(self.path).replace("'", "''")


def _numbered(con: duckdb.DuckDBPyConnection, name: str, source: str) -> int:
    """Temp table `name(ix, id, phash)` over `source`, ix = 0, 1, ... (the search works on integers; ids stay
    in DuckDB). The numbering is in no particular order: no decision depends on it (keepers are chosen by
    the keeper rule, not by ix). Returns the row count."""
    con.execute(f"""CREATE TEMP TABLE {name} AS
                    SELECT (row_number() OVER () - 1)::BIGINT AS ix, id, phash FROM {source}""")
    return fetch_first(con, f"SELECT count(*) FROM {name}")[0]


def _components(con: duckdb.DuckDBPyConnection, edges: str) -> int:
    """Temp table `comp(ix, root)`: each node of the graph `edges(a, b)` and the smallest ix of its connected
    component, set-wise (min-label propagation with pointer jumping; DuckDB spills, so memory does not grow
    with the corpus). Returns the rounds taken."""
    con.execute(
        f"CREATE TEMP TABLE und AS SELECT a AS x, b AS y FROM {edges} UNION ALL SELECT b, a FROM {edges}"
    )
    con.execute("CREATE TEMP TABLE comp AS SELECT x AS ix, least(x, min(y)) AS root FROM und GROUP BY x")
    for rounds in range(1, _MAX_COMPONENT_ROUNDS + 1):
        con.execute("""CREATE TEMP TABLE comp_next AS
            WITH hop AS (SELECT u.x AS ix, min(c.root) AS root FROM und u JOIN comp c ON c.ix = u.y GROUP BY u.x),
                 low AS (SELECT c.ix, least(c.root, coalesce(h.root, c.root)) AS root
                         FROM comp c LEFT JOIN hop h USING (ix))
            SELECT l.ix, least(l.root, r.root) AS root FROM low l JOIN low r ON r.ix = l.root""")
        changed = fetch_first(
            con, "SELECT count(*) FROM comp_next n JOIN comp c USING (ix) WHERE n.root <> c.root"
        )[0]
        con.execute("DROP TABLE comp")
        con.execute("ALTER TABLE comp_next RENAME TO comp")
        if not changed:
            con.execute("DROP TABLE und")
            return rounds
    raise RuntimeError(f"near-duplicate clusters did not settle in {_MAX_COMPONENT_ROUNDS} rounds")


def _priority_sql(config: DedupConfig) -> str:
    cases = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(config.source_priority))
    return f"CASE r.source {cases} ELSE {len(config.source_priority)} END"


def _base_run(catalog: Catalog) -> tuple[str, list[str]] | None:
    """The latest succeeded dedup run and its chain (itself, then the runs whose decisions it carried)."""
    runs = succeeded_runs(catalog, "dedup")
    return (runs[0].run_id, runs[0].chain) if runs else None


def run_dedup(catalog: Catalog, config: DedupConfig | None = None, *, full: bool = False) -> dict:
    """Decide every fetched image: kept, or dropped with its reason (see the module's steps).

    The decisions are always computed over the whole corpus (clusters are global), but unless `full` the
    run writes only those that differ from the latest succeeded run's, plus a row with `kept` NULL for a
    record no longer a candidate; `dedup_decisions_as_of(run)` is everything the run stands for (its chain,
    newest decision per record), and the run's counts are of that whole set. A rerun with nothing changed
    writes no rows."""
    config = config or DedupConfig()
    base = None if full else _base_run(catalog)
    with StageRun(catalog, "dedup", config=config) as run:
        if config.pdq_leak_k is not None:
            require_pdq()  # a clear error before any work, not a leak check that silently did nothing
        for name, path in config.eval_sets.items():
            hash_eval_set(
                catalog,
                name,
                path,
                run.run_id,
                pdq=config.pdq_leak_k is not None,
                replace_eval=config.replace_eval,
            )
        for name, path in config.eval_eol_pages.items():
            store_eol_pages(catalog, name, path, run.run_id)
        # On a snapshot: the catalog is held only while its small tables are copied, not for the search;
        # the decisions go to the lake as a part, which needs no catalog connection.
        # Under the dedup lock no other dedup runs, so a work folder here is a killed run's leftover.
        for stale in (catalog.home / "work").glob("dedup-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = catalog.home / "work" / f"dedup-{run.run_id}"
        try:
            with catalog.snapshot() as con:
                _decide(con, config, run, work, base)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return run.summary()


def _hashes(con: duckdb.DuckDBPyConnection, table: str) -> tuple[pa.Array, np.ndarray]:
    t = con.sql(f"SELECT id, phash FROM {table} ORDER BY id").arrow()
    if isinstance(t, pa.RecordBatchReader):
        t = t.read_all()
    return t["id"].combine_chunks(), t["phash"].to_numpy()


def find_leaks(con: duckdb.DuckDBPyConnection, config: DedupConfig, run: StageRun, work: Path) -> None:
    """Step 1. Table `leaks(id, eval_set, eval_id, distance)`: nearest evaluation image per training image."""
    con.execute("CREATE TEMP TABLE leak_pairs (id VARCHAR, eval_id VARCHAR, distance INTEGER)")
    # Every stored evaluation set counts, including those hashed by earlier runs.
    if fetch_first(con, "SELECT count(*) FROM eval_hashes")[0]:
        con.execute("""CREATE TEMP TABLE ev AS SELECT eval_set || ':' || path AS id, eval_set, md5, phash
                       FROM eval_hashes WHERE phash IS NOT NULL""")
        # Degenerate hashes (blank or uniform images) leak by MD5 only: by pHash a blank test image would
        # "match" every blank training image.
        lo, hi = config.degenerate_min_bits, 64 - config.degenerate_min_bits
        n_ok = _numbered(con, "okx", "(SELECT * FROM ok WHERE NOT degenerate)")
        ev_ids, ev_hashes = _hashes(con, f"(SELECT * FROM ev WHERE bit_count(phash) BETWEEN {lo} AND {hi})")
        con.register("ev_ix", pa.table({"j": np.arange(len(ev_ids), dtype=np.int64), "eval_id": ev_ids}))
        sink = _PairSink(work / "leak_pairs.parquet", pa.schema([("ix", pa.int64()), ("j", pa.int64()),
                                                                 ("distance", pa.int32())]))  # fmt: skip
        with run.timed("leak_search"):
            if n_ok and len(ev_hashes):
                # The training side streams in batches; the evaluation sets (small) stay in memory.
                layout = plan_layout(config.leak_k, n_ok, len(ev_hashes))
                for ix, h in _hash_batches(con, "SELECT ix, phash FROM okx ORDER BY ix"):
                    i, j, d = near_pairs(h, config.leak_k, other=ev_hashes, layout=layout)
                    sink.add(ix=ix[i], j=j, distance=d.astype(np.int32))
        found = sink.close()
        con.execute(f"""INSERT INTO leak_pairs
                        SELECT o.id, e.eval_id, p.distance FROM read_parquet('{found}') p
                        JOIN okx o USING (ix) JOIN ev_ix e USING (j)
                        UNION ALL SELECT o.id, e.id, 0 FROM ok o JOIN ev e ON o.md5 = e.md5""")
        run.details["leak_pairs"] = sink.rows
        run.details["eval_sets"] = dict(
            con.execute("SELECT eval_set, count(*) FROM ev GROUP BY ALL").fetchall()
        )
        if config.pdq_leak_k is not None:
            with run.timed("pdq_leak_search"):
                run.details["pdq_leak_pairs"] = _pdq_leaks(con, config)
    # Id-listed benchmarks: every record of a listed EOL page, whatever its image looks like.
    con.execute("""INSERT INTO leak_pairs SELECT o.id, e.eval_set || ':eol_page:' || e.occurrence_id, 0
                   FROM ok o JOIN raw_records r ON r.record_id = o.id
                   JOIN eval_ids e ON e.source = r.source AND e.occurrence_id = r.occurrence_id""")
    con.execute("""CREATE TEMP TABLE leaks AS
        SELECT p.id, split_part(p.eval_id, ':', 1) AS eval_set, p.eval_id, p.distance FROM leak_pairs p
        QUALIFY row_number() OVER (PARTITION BY p.id ORDER BY p.distance, p.eval_id) = 1""")


def pdq_words(column: str) -> str:
    """SQL for the four 64-bit words (`w0` .. `w3`) of a 64-hex-character PDQ column, for popcounts."""
    return ", ".join(f"('0x' || substr({column}, {1 + 16 * w}, 16))::UBIGINT AS w{w}" for w in range(4))


def _pdq_leaks(con: duckdb.DuckDBPyConnection, config: DedupConfig) -> int:
    """PDQ pairs within `pdq_leak_k` of 256 bits into `leak_pairs`, exact and set-wise in DuckDB: the hashes
    are cut into 16 segments of 16 bits; a pair within k <= 15 agrees exactly on at least one, so candidates
    are pairs sharing a segment, each verified by popcount. Returns the pairs found."""
    missing = fetch_first(con, "SELECT count(*) FROM ok WHERE pdq_hex IS NULL")[0]
    if missing:
        raise ValueError(
            f"the PDQ leak check (pdq_leak_k={config.pdq_leak_k}) needs every image's PDQ hash: {missing} images "
            "were fetched without it; fetch with --pdq (`tol fetch --pdq --retry-failed` does not refetch "
            "them: fetch into a home with --pdq from the start) or leave pdq_leak_k unset"
        )
    q = int(config.pdq_min_quality)
    segs = "SELECT {id} AS id, s, substr(pdq_hex, 1 + 4 * s, 4) AS seg FROM {table}, range(16) r(s) WHERE {where}"
    con.execute(f"""CREATE TEMP TABLE pdq_pairs AS
        WITH t AS ({segs.format(id="id", table="ok", where=f"pdq_quality >= {q}")}),
             e AS ({segs.format(id="eval_set || ':' || path", table="eval_hashes", where=f"pdq_hex IS NOT NULL AND pdq_quality >= {q}")}),
             c AS (SELECT DISTINCT t.id, e.id AS eval_id FROM t JOIN e USING (s, seg)),
             tw AS (SELECT id, {pdq_words("pdq_hex")} FROM ok),
             ew AS (SELECT eval_set || ':' || path AS eval_id, {pdq_words("pdq_hex")} FROM eval_hashes WHERE pdq_hex IS NOT NULL)
        SELECT c.id, c.eval_id, (bit_count(xor(tw.w0, ew.w0)) + bit_count(xor(tw.w1, ew.w1))
                                 + bit_count(xor(tw.w2, ew.w2)) + bit_count(xor(tw.w3, ew.w3)))::INT AS distance
        FROM c JOIN tw USING (id) JOIN ew USING (eval_id)""")
    con.execute(
        f"INSERT INTO leak_pairs SELECT id, eval_id, distance FROM pdq_pairs WHERE distance <= {int(config.pdq_leak_k)}"
    )
    return fetch_first(con, f"SELECT count(*) FROM pdq_pairs WHERE distance <= {int(config.pdq_leak_k)}")[0]


def find_exact(con: duckdb.DuckDBPyConnection, order: str) -> None:
    """Step 2. Tables `exact(id, keeper)` for the dropped copies and `uniq`, one image per MD5."""
    con.execute("CREATE TEMP VIEW pool AS SELECT * FROM ok WHERE id NOT IN (SELECT id FROM leaks)")
    con.execute(f"""CREATE TEMP TABLE exact AS SELECT * FROM (
                      SELECT id, first_value(id) OVER (PARTITION BY md5 ORDER BY {order}) AS keeper FROM pool)
                    WHERE id <> keeper""")
    con.execute("CREATE TEMP VIEW uniq AS SELECT * FROM pool WHERE id NOT IN (SELECT id FROM exact)")


def find_near(
    con: duckdb.DuckDBPyConnection, config: DedupConfig, order: str, run: StageRun, work: Path
) -> None:
    """Step 3. Table `near(id, keeper, distance)`: clusters of the non-degenerate unique images.

    The search reads (ix, phash) from DuckDB sorted by each prefix group's segments, in record batches
    (`near_dup.stream_pairs`), and appends the pairs to a Parquet file; clusters are found in SQL."""
    con.execute("CREATE TEMP VIEW clusterable AS SELECT * FROM uniq WHERE NOT degenerate")
    n = _numbered(con, "hx", "clusterable")
    sink = _PairSink(work / "near_pairs.parquet", pa.schema([("a", pa.int64()), ("b", pa.int64())]))
    with run.timed("near_search"):
        if n >= 2:
            layout = plan_layout(config.near_k, n)
            groups = prefix_groups(layout, n)
            run.details["near_layout"] = {
                "segments": layout.segments,
                "match": layout.match,
                "prefix_groups": len(groups),
            }
            # Progress for searches long enough to watch (one batch or more), not for small homes.
            level = logging.INFO if n >= _BATCH_ROWS else logging.DEBUG
            for g, (prefix, subsets) in enumerate(groups, 1):
                log.log(level, "near-duplicate search: key group %d of %d (%d hashes, %d pairs so far)",
                        g, len(groups), n, sink.rows)  # fmt: skip
                order_by = prefix_order_sql("phash", layout, prefix)
                batches = _hash_batches(con, f"SELECT ix, phash FROM hx ORDER BY {order_by}")
                for packed in stream_pairs(batches, config.near_k, layout, prefix, subsets):
                    sink.add(a=(packed >> np.uint64(32)).astype(np.int64),
                             b=(packed & np.uint64(0xFFFFFFFF)).astype(np.int64))  # fmt: skip
    found = sink.close()
    # A pair agreeing on several subsets is found once per subset.
    con.execute(f"CREATE TEMP TABLE near_edges AS SELECT DISTINCT a, b FROM read_parquet('{found}')")
    with run.timed("near_clusters"):
        rounds = _components(con, "near_edges")
    edges = fetch_first(con, "SELECT count(*) FROM near_edges")[0]
    log.info(
        "near duplicates: %d pairs within %d bits, clusters settled in %d rounds",
        edges,
        config.near_k,
        rounds,
    )
    con.execute(f"""CREATE TEMP TABLE near AS
        WITH m AS (SELECT comp.root, c.* FROM comp JOIN hx USING (ix) JOIN clusterable c USING (id)),
             k AS (SELECT root, first(id ORDER BY {order}) AS keeper, first(phash ORDER BY {order}) AS kh
                   FROM m GROUP BY root)
        SELECT m.id, k.keeper, bit_count(xor(m.phash, k.kh))::INT AS distance
        FROM m JOIN k USING (root) WHERE m.id <> k.keeper""")
    run.details.update(
        near_candidate_pairs=edges,
        clusters=fetch_first(con, "SELECT count(DISTINCT root) FROM comp")[0],
        cluster_rounds=rounds,
    )


def _decide(
    con: duckdb.DuckDBPyConnection,
    config: DedupConfig,
    run: StageRun,
    work: Path,
    base: tuple[str, list[str]] | None,
) -> None:
    # `cand` is the one copy of the candidates; `ok`, `pool`, `uniq` and `clusterable` are views over it (a
    # table each would hold the corpus four more times).
    con.execute(f"""CREATE TEMP TABLE cand AS
        SELECT i.record_id AS id, i.md5, i.phash, i.pdq_hex, i.pdq_quality, i.status, r.source,
               {_priority_sql(config)} AS source_rank, coalesce(i.width * i.height, 0) AS pixels,
               r.ingested_at,
               bit_count(i.phash) < {config.degenerate_min_bits}
                 OR bit_count(i.phash) > {64 - config.degenerate_min_bits} AS degenerate
        FROM images i JOIN raw_records r USING (record_id)""")
    run.n_in = fetch_first(con, "SELECT count(*) FROM cand")[0]
    con.execute("CREATE TEMP VIEW ok AS SELECT * FROM cand WHERE status = 'ok' AND phash IS NOT NULL")
    order = "source_rank, pixels DESC, ingested_at, id"
    find_leaks(con, config, run, work)
    find_exact(con, order)
    find_near(con, config, order, run, work)
    # One row per image: the first reason that applies, in step order.
    # The decisions never pass through Python: DuckDB writes them as the run's lake part.
    con.execute(
        """CREATE TEMP TABLE decided AS SELECT c.id AS record_id,
                  (l.id IS NULL AND x.id IS NULL AND n.id IS NULL AND c.status = 'ok' AND c.phash IS NOT NULL)
                    AS kept,
                  CASE WHEN c.status <> 'ok' OR c.phash IS NULL THEN 'no_hash'
                       WHEN l.id IS NOT NULL THEN 'eval_leak:' || l.eval_set
                       WHEN x.id IS NOT NULL THEN 'exact_duplicate'
                       WHEN n.id IS NOT NULL THEN 'near_duplicate'
                       WHEN c.degenerate THEN 'degenerate_hash' END AS reason,
                  coalesce(l.eval_id, x.keeper, n.keeper) AS duplicate_of,
                  CASE WHEN l.id IS NOT NULL THEN l.distance WHEN x.id IS NOT NULL THEN 0
                       ELSE n.distance END::INT AS distance,
                  $run_id AS run_id
           FROM cand c LEFT JOIN leaks l USING (id) LEFT JOIN exact x USING (id) LEFT JOIN near n USING (id)""",
        {"run_id": run.run_id},
    )
    written = "SELECT * FROM decided"
    if base is not None:
        # Only what changed: a decision the base chain does not hold as it is now, and a row without a
        # decision for each record the base decided that is no longer a candidate (it stops the carry).
        b = base[0].replace("'", "''")
        same = " AND ".join(
            f"s.{c} IS NOT DISTINCT FROM d.{c}" for c in ("kept", "reason", "duplicate_of", "distance")
        )
        con.execute(f"CREATE TEMP TABLE base_decisions AS SELECT * FROM dedup_decisions_as_of('{b}')")
        written = f"""SELECT d.* FROM decided d LEFT JOIN base_decisions s USING (record_id)
                      WHERE s.record_id IS NULL OR NOT ({same})
                      UNION ALL
                      SELECT s.record_id, NULL AS kept, 'no longer a candidate' AS reason, NULL AS duplicate_of,
                             NULL AS distance, '{run.run_id.replace("'", "''")}' AS run_id
                      FROM base_decisions s ANTI JOIN decided d USING (record_id)"""
    con.execute(f"CREATE TEMP TABLE written AS {written}")
    export_part(
        con,
        run.catalog.lake,
        "dedup_decisions_history",
        "SELECT * FROM written ORDER BY record_id",
        partition={"run": run.run_id},
        part="decisions",
    )
    n_written, n_decided = fetch_first(
        con, "SELECT count(*), count(*) FILTER (WHERE kept IS NOT NULL) FROM written"
    )
    run.details.update(
        chain=[run.run_id, *(base[1] if base else [])],
        base_run=base[0] if base else None,
        rows_written=n_written,
        carried=run.n_in - n_decided,
    )
    for reason, n in con.execute(
        "SELECT reason, count(*) FROM decided WHERE NOT kept GROUP BY reason ORDER BY reason"
    ).fetchall():
        run.drop(reason, n)
    run.n_out = fetch_first(con, "SELECT count(*) FROM decided WHERE kept")[0]
