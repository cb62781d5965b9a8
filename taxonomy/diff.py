"""What changed between two resolutions (two resolve runs, often against two backbones: GBIF's frozen 2023
backbone and the Catalogue of Life XR GBIF now interprets against): per record, the label at each of the 7
ranks under run A and under run B, and a summary a person reads (how many labels changed, at which rank, how
many images that moves between species classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warehouse.catalog import Catalog
from warehouse.contracts import RANKS
from warehouse.stage_runs import succeeded_run
from warehouse.tables import quote_ident, sql_path


def diff_sql() -> str:
    """The changed records: params 1 and 2 are the two resolve runs. One row per record whose label at any
    rank differs (a record resolved in one run only counts too), with both lineages and the first rank that
    differs (`first_changed`, from kingdom down)."""
    side = """SELECT s.record_id, s.taxon_id, s.backbone_version, s.match_type, {cols}
              FROM resolutions_as_of(?) s
              LEFT JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version"""
    cols = ", ".join(f"t.{quote_ident(r)}" for r in RANKS)
    differs = [f"a.{quote_ident(r)} IS DISTINCT FROM b.{quote_ident(r)}" for r in RANKS]
    first = " ".join(f"WHEN {d} THEN '{r}'" for d, r in zip(differs, RANKS, strict=True))
    pairs = ", ".join(f"a.{quote_ident(r)} AS {r}_a, b.{quote_ident(r)} AS {r}_b" for r in RANKS)
    return f"""
        WITH a AS ({side.format(cols=cols)}), b AS ({side.format(cols=cols)})
        SELECT record_id, CASE {first} END AS first_changed,
               a.taxon_id AS taxon_a, b.taxon_id AS taxon_b,
               a.backbone_version AS backbone_a, b.backbone_version AS backbone_b,
               a.match_type AS match_a, b.match_type AS match_b, {pairs}
        FROM a FULL JOIN b USING (record_id)
        WHERE {" OR ".join(differs)}
        ORDER BY record_id"""


def taxonomy_diff(
    catalog: Catalog, run_a: str, run_b: str, out: str | Path | None = None, sample: int = 10
) -> dict[str, Any]:
    """Compare two succeeded resolve runs: a summary (records compared and changed, changes per rank, images
    moving between species, the backbones), the first `sample` changed rows, and with `out` every changed
    row written to a CSV or Parquet file (by its suffix)."""
    run_a, run_b = succeeded_run(catalog, "resolve", run_a), succeeded_run(catalog, "resolve", run_b)
    changed = f"({diff_sql()})"
    per_rank = ", ".join(f"count(*) FILTER (WHERE {r}_a IS DISTINCT FROM {r}_b) AS {r}" for r in RANKS)
    with catalog.connect() as con:
        compared = con.execute(
            "SELECT count(*) FROM (SELECT record_id FROM resolutions_as_of(?)"
            " UNION SELECT record_id FROM resolutions_as_of(?))",
            [run_a, run_b],
        ).fetchone()[0]
        row = con.execute(f"SELECT count(*), {per_rank} FROM {changed}", [run_a, run_b]).fetchone()
        moving = con.execute(
            f"""SELECT count(*) FROM {changed} c JOIN image_locations USING (record_id)
                WHERE c.species_a IS DISTINCT FROM c.species_b""",
            [run_a, run_b],
        ).fetchone()[0]
        backbones = con.execute(
            "SELECT DISTINCT backbone_version FROM resolutions_as_of(?) WHERE backbone_version IS NOT NULL"
            " UNION SELECT DISTINCT backbone_version FROM resolutions_as_of(?) WHERE backbone_version IS NOT NULL",
            [run_a, run_b],
        ).fetchall()
        cols = [d[0] for d in con.execute(f"SELECT * FROM {changed} LIMIT 0", [run_a, run_b]).description]
        sample_rows = con.execute(f"SELECT * FROM {changed} LIMIT {int(sample)}", [run_a, run_b]).fetchall()
        if out is not None:
            out = Path(out)
            kind = "PARQUET" if out.suffix == ".parquet" else "CSV, HEADER"
            tmp = out.with_name(f".{out.name}.tmp")
            con.execute(f"COPY {changed} TO {sql_path(tmp)} (FORMAT {kind})", [run_a, run_b])
            tmp.replace(out)
    return {
        "run_a": run_a,
        "run_b": run_b,
        "backbones": sorted(b for (b,) in backbones),
        "records_compared": compared,
        "records_changed": row[0],
        "changed_at_rank": dict(zip(RANKS, row[1:], strict=True)),
        "images_moving_between_species": moving,
        "sample": [dict(zip(cols, r, strict=True)) for r in sample_rows],
        **({"written": str(out)} if out is not None else {}),
    }
