"""Dedup stage: decisions, not deletions. Separately runnable steps, set-wise in DuckDB:

1. leaks: training images within `leak_k` bits (or equal MD5) of any evaluation image -> `eval_leak:<name>`;
2. exact: one keeper per MD5 of the original bytes -> `exact_duplicate`;
3. near: candidate pairs from a band index on the 64-bit pHash (k+1 segments: any pair within distance k
   shares one segment exactly), popcount check, connected components, one keeper per cluster.
Keeper rule: source priority, then larger image, then earliest record. Degenerate hashes (near-constant
bits, from blank or uniform images) are flagged and never clustered.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from etl.images import ImageConfig, process_image
from warehouse.catalog import Catalog, fetch_first
from warehouse.lake import write_parquet_atomic
from warehouse.schemas import DEDUP_DECISIONS, EVAL_HASHES
from warehouse.stage_runs import StageRun

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class DedupConfig:
    near_k: int = 6  # planted resize/re-encode variants sit at 0-4; distinct images at 20+ (NEAR_DUP.md)
    leak_k: int = 8
    source_priority: tuple[str, ...] = ("gbif", "eol", "bioscan", "fathomnet")
    degenerate_min_bits: int = 4  # hashes with fewer than this many 1-bits (or 0-bits) are degenerate
    eval_sets: dict[str, str] = field(default_factory=dict)


def _image_files(path: Path) -> list[Path]:
    meta = path / "metadata.csv"
    if meta.exists():
        with open(meta, newline="", encoding="utf-8") as fh:
            return [path / row["filepath"] for row in csv.DictReader(fh)]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def hash_eval_set(catalog: Catalog, name: str, path: str | Path, run_id: str) -> pa.Table:
    """Hash an evaluation folder (with `metadata.csv` or plain) the same way fetched images are hashed."""
    path = Path(path)
    rows: dict[str, list] = {f.name: [] for f in EVAL_HASHES}
    config = ImageConfig(min_side=1)
    for file in _image_files(path):
        img = process_image(file.read_bytes(), config)
        for k, v in (
            ("eval_set", name),
            ("path", str(file.relative_to(path))),
            ("md5", img.md5),
            ("phash", img.phash),
            ("run_id", run_id),
        ):
            rows[k].append(v)
    table = pa.Table.from_pydict(rows, schema=EVAL_HASHES)
    write_parquet_atomic(table, catalog.lake / "eval_hashes" / f"set={name}" / "hashes.parquet")
    return table


def _segment_exprs(k: int, alias: str) -> list[str]:
    """k+1 bit ranges covering the 64 bits; equal on at least one for any pair within distance k."""
    m = k + 1
    bounds = [round(i * 64 / m) for i in range(m + 1)]
    return [f"(({alias}.phash >> {lo}) & {(1 << (hi - lo)) - 1})" for lo, hi in itertools.pairwise(bounds)]


def near_pairs_sql(left: str, right: str, k: int, same_table: bool) -> str:
    """SQL for pairs (a, b) with Hamming distance <= k, via an exact join on each segment (a band index)."""
    parts = []
    for seg_a, seg_b in zip(_segment_exprs(k, "a"), _segment_exprs(k, "b"), strict=False):
        cond = "a.id < b.id AND " if same_table else ""
        parts.append(
            f"SELECT a.id AS a, b.id AS b FROM {left} a JOIN {right} b ON {seg_a} = {seg_b} "
            f"WHERE {cond}bit_count(xor(a.phash, b.phash)) <= {k}"
        )
    union = " UNION ".join(parts)
    return f"""SELECT p.a, p.b, bit_count(xor(x.phash, y.phash))::INT AS distance
               FROM ({union}) p JOIN {left} x ON x.id = p.a JOIN {right} y ON y.id = p.b"""


def _components(pairs: list[tuple[str, str]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def _priority_sql(config: DedupConfig) -> str:
    cases = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(config.source_priority))
    return f"CASE r.source {cases} ELSE {len(config.source_priority)} END"


def run_dedup(catalog: Catalog, config: DedupConfig | None = None) -> dict:
    config = config or DedupConfig()
    with StageRun(catalog, "dedup", config=config) as run:
        for name, path in config.eval_sets.items():
            hash_eval_set(catalog, name, path, run.run_id)
        with catalog.connect() as con:
            _decide(con, config, run)
    return run.summary()


def _decide(con: duckdb.DuckDBPyConnection, config: DedupConfig, run: StageRun) -> None:
    catalog = run.catalog
    con.execute(f"""CREATE TEMP TABLE cand AS
        SELECT i.record_id AS id, i.md5, i.phash, i.status, r.source,
               {_priority_sql(config)} AS source_rank, coalesce(i.width * i.height, 0) AS pixels,
               r.ingested_at,
               bit_count(i.phash) < {config.degenerate_min_bits}
                 OR bit_count(i.phash) > {64 - config.degenerate_min_bits} AS degenerate
        FROM images i JOIN raw_records r USING (record_id)""")
    run.n_in = fetch_first(con, "SELECT count(*) FROM cand")[0]
    decisions: dict[str, tuple[bool, str | None, str | None, int | None]] = {}
    for (rid,) in con.execute("SELECT id FROM cand WHERE status <> 'ok' OR phash IS NULL").fetchall():
        decisions[rid] = (False, "no_hash", None, None)
    con.execute("CREATE TEMP TABLE ok AS SELECT * FROM cand WHERE status = 'ok' AND phash IS NOT NULL")
    # 1. leaks
    if config.eval_sets:
        con.execute("""CREATE TEMP TABLE ev AS SELECT eval_set || ':' || path AS id, eval_set, md5, phash
                       FROM eval_hashes WHERE phash IS NOT NULL""")
        leaks = con.execute(f"""
            SELECT id, eval_set, eval_id, distance FROM (
              SELECT p.a AS id, e.eval_set, p.b AS eval_id, p.distance,
                     row_number() OVER (PARTITION BY p.a ORDER BY p.distance, p.b) AS k
              FROM ({near_pairs_sql("ok", "ev", config.leak_k, False)}) p JOIN ev e ON e.id = p.b
              UNION ALL
              SELECT o.id, e.eval_set, e.id, 0, 0 FROM ok o JOIN ev e ON o.md5 = e.md5
            ) WHERE k <= 1 QUALIFY row_number() OVER (PARTITION BY id ORDER BY distance) = 1""").fetchall()
        for rid, eval_set, eval_id, dist in leaks:
            decisions[rid] = (False, f"eval_leak:{eval_set}", eval_id, int(dist))
    leaked = [rid for rid, d in decisions.items() if d[1] and d[1].startswith("eval_leak")]
    con.execute("CREATE TEMP TABLE leaked (id VARCHAR)")
    if leaked:
        con.executemany("INSERT INTO leaked VALUES (?)", [[r] for r in leaked])
    con.execute("CREATE TEMP TABLE pool AS SELECT * FROM ok WHERE id NOT IN (SELECT id FROM leaked)")
    order = "source_rank, pixels DESC, ingested_at, id"
    # 2. exact
    exact = con.execute(f"""SELECT id, first_value(id) OVER w AS keeper FROM pool
                            WINDOW w AS (PARTITION BY md5 ORDER BY {order})""").fetchall()
    for rid, keeper in exact:
        if rid != keeper:
            decisions[rid] = (False, "exact_duplicate", keeper, 0)
    con.execute("""CREATE TEMP TABLE uniq AS SELECT * FROM pool
                   QUALIFY row_number() OVER (PARTITION BY md5 ORDER BY source_rank, pixels DESC,
                                              ingested_at, id) = 1""")
    # 3. near, degenerate hashes excluded
    con.execute("CREATE TEMP TABLE clusterable AS SELECT * FROM uniq WHERE NOT degenerate")
    pairs = con.execute(near_pairs_sql("clusterable", "clusterable", config.near_k, True)).fetchall()
    comp = _components([(a, b) for a, b, _ in pairs])
    if comp:
        con.execute("CREATE TEMP TABLE comp (id VARCHAR, root VARCHAR)")
        con.executemany("INSERT INTO comp VALUES (?, ?)", [[k, v] for k, v in comp.items()])
        keepers = dict(
            con.execute(f"""SELECT root, first(id ORDER BY {order}) FROM comp JOIN clusterable
                                       USING (id) GROUP BY root""").fetchall()
        )
        dist = {}
        for a, b, d in pairs:
            dist[(a, b)] = dist[(b, a)] = d
        phash = dict(
            con.execute("SELECT id, phash FROM clusterable WHERE id IN (SELECT id FROM comp)").fetchall()
        )
        for rid, root in comp.items():
            keeper = keepers[root]
            if rid != keeper:
                d = dist.get((rid, keeper), bin((phash[rid] ^ phash[keeper]) & (2**64 - 1)).count("1"))
                decisions[rid] = (False, "near_duplicate", keeper, int(d))
    for (rid,) in con.execute("SELECT id FROM uniq WHERE degenerate").fetchall():
        decisions.setdefault(rid, (True, "degenerate_hash", None, None))
    for (rid,) in con.execute("SELECT id FROM cand").fetchall():
        decisions.setdefault(rid, (True, None, None, None))
    ids = sorted(decisions)
    table = pa.Table.from_pydict(
        {
            "record_id": ids,
            "kept": [decisions[i][0] for i in ids],
            "reason": [decisions[i][1] for i in ids],
            "duplicate_of": [decisions[i][2] for i in ids],
            "distance": [decisions[i][3] for i in ids],
            "run_id": [run.run_id] * len(ids),
        },
        schema=DEDUP_DECISIONS,
    )
    write_parquet_atomic(table, catalog.lake / "dedup" / f"run={run.run_id}" / "decisions.parquet")
    for kept, reason, _, _ in decisions.values():
        if not kept:
            run.drop(reason)
    run.n_out = sum(1 for d in decisions.values() if d[0])
    run.details = {"near_candidate_pairs": len(pairs), "clusters": len(set(comp.values()))}


def latest_dedup_run(con: duckdb.DuckDBPyConnection) -> str | None:
    row = fetch_first(
        con,
        """SELECT run_id FROM stage_runs WHERE stage = 'dedup' AND status = 'succeeded'
                         ORDER BY ended_at DESC LIMIT 1""",
    )
    return row[0] if row else None
