"""Load a GBIF-backbone-style DwC-A checklist (`Taxon.tsv`, `VernacularName.tsv`) into Parquet and `taxa`.

Set-wise in DuckDB: unquoted TSV, every column read as text, streamed. The version is a checksum of the files,
so loading the same files twice is a no-op.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
import zipfile
from pathlib import Path

from duckdb.sqltypes import VARCHAR

from taxonomy.names import canonical_name
from warehouse.archives import extract_zip
from warehouse.catalog import Catalog, fetch_first
from warehouse.contracts import HIGHER_RANKS
from warehouse.stage_runs import StageRun
from warehouse.tables import conformed_select, sql_path
from warehouse.writers import record_backbone


def _checksum(paths: list[Path]) -> str:
    h = hashlib.sha1()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _extract(path: Path, workdir: Path) -> Path:
    """A folder as it is; a zip extracted once into a folder named by its checksum, through a temporary
    folder and a rename, so a killed or concurrent extraction is never read half-written."""
    if path.is_dir():
        return path
    into = workdir / _checksum([path])
    if into.is_dir():
        return into
    tmp = workdir / f".{into.name}.{uuid.uuid4().hex}.tmp"
    with zipfile.ZipFile(path) as zf:
        extract_zip(zf, tmp)  # each member streamed and capped; a '..' name is refused
    try:
        tmp.rename(into)
    except OSError:  # another process finished the same extraction first
        shutil.rmtree(tmp, ignore_errors=True)
    return into


TAXON_REQUIRED = ("taxonID", "scientificName", "taxonRank", "taxonomicStatus")
TAXON_OPTIONAL = (
    "canonicalName",
    "acceptedNameUsageID",
    "specificEpithet",
    *HIGHER_RANKS,  # Darwin Core names its rank columns as we name the ranks
)


def backbone_dir(catalog: Catalog, version: str) -> Path:
    return catalog.lake / "taxa" / f"backbone={version}"


def load_backbone(catalog: Catalog, path: str | Path, common_name_fallback: bool = False) -> str:
    """Load the checklist at `path` (folder or zip); returns its version. English common names are chosen
    deterministically: the shortest English name, ties broken alphabetically. With `common_name_fallback`, a
    taxon without one borrows its genus's, else its family's; `common_name_rank` then names the rank it came
    from (a flag: it differs from `taxon_rank`)."""
    path = Path(path)
    folder = _extract(path, catalog.lake / "taxa" / "_extracted")
    taxon, vern = folder / "Taxon.tsv", folder / "VernacularName.tsv"
    if not taxon.exists():
        raise FileNotFoundError(f"{taxon} not found: expected a DwC-A checklist with Taxon.tsv")
    version = _checksum([taxon] + ([vern] if vern.exists() else []))
    if common_name_fallback:
        version += "-cnfallback"  # different common names, so a different version of the same files
    with catalog.connect() as con:
        if fetch_first(con, "SELECT 1 FROM backbones WHERE backbone_version = ?", [version]):
            return version  # loading the same files again is a no-op
    out = backbone_dir(catalog, version)
    with (
        StageRun(catalog, "load_backbone", config={"path": str(path), "version": version}) as run,
        catalog.connect() as con,
    ):
        # Checked under the stage lock, and everything below is one transaction: a load killed half-way
        # leaves no rows behind, so it can simply be run again.
        if fetch_first(con, "SELECT 1 FROM backbones WHERE backbone_version = ?", [version]):
            run.message = f"backbone {version} was loaded by another run meanwhile"
            return version
        out.mkdir(parents=True, exist_ok=True)
        con.execute("BEGIN TRANSACTION")
        opts = "delim='\t', header=true, quote='', escape='', all_varchar=true, null_padding=true"
        raw = f"read_csv({sql_path(taxon)}, {opts})"
        con.execute(
            f"CREATE TEMP TABLE t AS {conformed_select(con, raw, TAXON_REQUIRED, TAXON_OPTIONAL, taxon)}"
        )
        # The GBIF backbone leaves canonicalName empty for hybrids and BOLD BINs: parse scientificName there.
        con.create_function("canonical_of", lambda s: canonical_name(s)[0], [VARCHAR], VARCHAR)
        con.execute("""UPDATE t SET canonicalName = canonical_of(scientificName)
                       WHERE nullif(trim(canonicalName), '') IS NULL AND scientificName IS NOT NULL""")
        if vern.exists():
            raw = f"read_csv({sql_path(vern)}, {opts})"
            con.execute(
                f"CREATE TEMP TABLE v AS {conformed_select(con, raw, ('taxonID', 'vernacularName'), ('language',), vern)}"
            )
        else:
            con.execute("CREATE TEMP TABLE v (taxonID VARCHAR, vernacularName VARCHAR, language VARCHAR)")
        con.execute(f"COPY t TO {sql_path(out / 'taxon.parquet')} (FORMAT parquet)")
        con.execute(f"COPY v TO {sql_path(out / 'vernacular.parquet')} (FORMAT parquet)")
        # One lineage row per accepted (or doubtful) usage: its own rank holds its own name, lower ranks null.
        con.execute(
            """
            CREATE TEMP TABLE new_taxa AS
            WITH names AS (
              SELECT taxonID, vernacularName AS name,
                     row_number() OVER (PARTITION BY taxonID ORDER BY length(vernacularName), vernacularName) AS k
              FROM v WHERE lower(language) IN ('en', 'eng', 'english') AND nullif(trim(vernacularName), '') IS NOT NULL
            ), usages AS (
              SELECT taxonID, lower(taxonRank) AS rnk, coalesce(nullif(canonicalName, ''), scientificName) AS nm,
                     nullif(kingdom, '') AS kingdom, nullif(phylum, '') AS phylum, nullif(class, '') AS class,
                     nullif("order", '') AS "order", nullif(family, '') AS family, nullif(genus, '') AS genus,
                     nullif(specificEpithet, '') AS epithet
              FROM t WHERE lower(taxonomicStatus) IN ('accepted', 'doubtful', 'provisionally accepted')
                AND taxonID <> '0'
            )
            SELECT u.taxonID AS taxon_id,
              CASE WHEN rnk = 'kingdom' THEN nm ELSE kingdom END AS kingdom,
              CASE WHEN rnk = 'phylum' THEN nm WHEN rnk IN ('kingdom') THEN NULL ELSE phylum END AS phylum,
              CASE WHEN rnk = 'class' THEN nm WHEN rnk IN ('kingdom', 'phylum') THEN NULL ELSE class END AS class,
              CASE WHEN rnk = 'order' THEN nm WHEN rnk IN ('kingdom', 'phylum', 'class') THEN NULL ELSE "order" END
                AS "order",
              CASE WHEN rnk = 'family' THEN nm WHEN rnk IN ('kingdom', 'phylum', 'class', 'order') THEN NULL
                   ELSE family END AS family,
              CASE WHEN rnk = 'genus' THEN nm WHEN rnk IN ('species', 'subspecies', 'variety', 'form') THEN genus
                   ELSE NULL END AS genus,
              CASE WHEN rnk IN ('species', 'subspecies', 'variety', 'form')
                   THEN coalesce(epithet, split_part(nm, ' ', 2)) END AS species,
              nm AS scientific_name, rnk AS taxon_rank, n.name AS common_name,
              CASE WHEN n.name IS NOT NULL THEN rnk END AS common_name_rank
            FROM usages u LEFT JOIN names n ON n.taxonID = u.taxonID AND n.k = 1
            """
        )
        if common_name_fallback:
            for rank in ("genus", "family"):
                con.execute(
                    f"""UPDATE new_taxa SET common_name = h.common_name, common_name_rank = h.taxon_rank
                        FROM new_taxa h
                        WHERE new_taxa.common_name IS NULL
                          AND h.taxon_rank = '{rank}' AND h.common_name_rank = '{rank}'
                          AND new_taxa.taxon_rank <> '{rank}' AND new_taxa.{rank} = h.{rank}
                          AND new_taxa.kingdom IS NOT DISTINCT FROM h.kingdom
                          AND (new_taxa.family IS NULL OR h.family IS NULL OR new_taxa.family = h.family)"""
                )
        n_taxa = fetch_first(con, "SELECT count(*) FROM t")[0]
        n_vern = fetch_first(con, "SELECT count(*) FROM v")[0]
        n_usable = fetch_first(con, "SELECT count(*) FROM new_taxa")[0]
        if not n_usable:
            con.execute("ROLLBACK")
            raise ValueError(
                f"{taxon}: no accepted or doubtful usages ({n_taxa} rows); an empty backbone would resolve "
                "nothing, so it is not loaded"
            )
        record_backbone(con, version, str(path), n_taxa, n_vern, rows="new_taxa")
        con.execute("COMMIT")
        run.n_in, run.n_out = n_taxa, n_usable
    return version


def latest_backbone(catalog: Catalog) -> str:
    with catalog.connect() as con:
        row = fetch_first(con, "SELECT backbone_version FROM backbones ORDER BY loaded_at DESC LIMIT 1")
    if row is None:
        raise LookupError("no backbone loaded: run `tol taxonomy load-backbone PATH` first")
    return row[0]
