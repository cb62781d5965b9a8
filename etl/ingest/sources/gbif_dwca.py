"""GBIF bulk downloads: a Darwin Core Archive (`occurrence.txt` + `multimedia.txt`, joined on `gbifID`), read
set-wise with DuckDB and streamed out in Arrow batches: the archive is never held in memory, and no Python
code runs per row. One row per media item, as the search-API connector makes them (same `record_id` for the
same occurrence and URL), an occurrence without media as one `no_media` row, and every line DuckDB cannot read
(bad UTF-8, wrong field count) as a `malformed_line` row naming the file and line.

The drop and image-type rules mirror `gbif.media_drop_reason` and `gbif.image_type` in SQL; a test runs both
on the same cases so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from etl.ingest.records import RECORD_NAMESPACE, normalize_license, payload_hash, record_id
from etl.ingest.sources import IngestConfig, Page
from etl.ingest.sources.gbif import CITIZEN_SCIENCE_PUBLISHERS, MUSEUM_BASES
from warehouse.archives import MAX_MEMBER_BYTES, extract_zip_member
from warehouse.contracts import HIGHER_RANKS
from warehouse.schemas import RAW_RECORDS
from warehouse.tables import conformed_select, sql_path

BATCH_ROWS = 250_000
MEMORY_LIMIT = "1GB"
OCC_REQUIRED = ("gbifID",)
OCC_OPTIONAL = (
    "datasetKey", "basisOfRecord", "scientificName", "taxonRank", *HIGHER_RANKS, "species", "eventDate", "license",
    "rightsHolder", "publisher", "institutionCode", "eventRemarks", "vernacularName",
)  # fmt: skip
MM_REQUIRED = ("gbifID", "identifier")
MM_OPTIONAL = ("type", "format", "license", "rightsHolder", "creator", "publisher")
CSV_OPTS = (
    "delim='\t', header=true, quote='', escape='', all_varchar=true, null_padding=true, "
    "ignore_errors=true, store_rejects=true, max_line_size=10000000"
)


def _not_a_dwca(path: Path, names: list[str]) -> str:
    files = [n for n in names if not n.endswith("/")]
    if len(files) == 1 and files[0].lower().endswith(".csv"):
        return (
            f"{path} is a GBIF SIMPLE_CSV download ({files[0]}), not a Darwin Core Archive: it has no media "
            "URLs; request the download with format DWCA"
        )
    shown = ", ".join(files[:5]) + (" ..." if len(files) > 5 else "")
    return f"{path}: no occurrence.txt, so not a GBIF Darwin Core Archive (it holds: {shown or 'nothing'})"


def archive_files(
    path: Path, workdir: Path, max_member_bytes: int = MAX_MEMBER_BYTES
) -> tuple[Path, Path | None, str]:
    """(occurrence.txt, multimedia.txt or None, archive checksum); a zip is extracted to `workdir` (streamed
    to disk member by member, each refused past `max_member_bytes`)."""
    digest = hashlib.sha1()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        target = workdir / digest.hexdigest()[:16]
        if not (target / ".extracted").exists():
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if "occurrence.txt" not in names:
                    raise ValueError(_not_a_dwca(path, names))
                for name in ("occurrence.txt", "multimedia.txt"):
                    if name in names:
                        extract_zip_member(zf, name, target, max_member_bytes)
            (target / ".extracted").touch()
        folder = target
    else:
        folder = path
        for name in ("occurrence.txt", "multimedia.txt"):
            if (folder / name).exists():
                stat = (folder / name).stat()
                digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    occurrence = folder / "occurrence.txt"
    if not occurrence.exists():
        raise FileNotFoundError(f"{path}: no occurrence.txt (expected a GBIF Darwin Core Archive)")
    multimedia = folder / "multimedia.txt"
    return occurrence, multimedia if multimedia.exists() else None, digest.hexdigest()


def _uuid5_sql(name_sql: str) -> str:
    """UUIDv5 (RFC 4122) in SQL, equal to `etl.ingest.records.record_id`: sha1(namespace || name), version and
    variant bits set."""
    h = f"sha1(from_hex('{RECORD_NAMESPACE.hex}') || encode({name_sql}))"
    return (
        f"(SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-5' || substr(h, 14, 3) || '-' || "
        f"(['8', '9', 'a', 'b'])[((('0x' || substr(h, 17, 1))::INT) & 3) + 1] || substr(h, 18, 3) || '-' || "
        f"substr(h, 21, 12) FROM (SELECT {h} AS h))"
    )


def _drop_reason_sql() -> str:
    """`gbif.media_drop_reason`, in SQL (o: occurrence, m: multimedia, url: the cleaned identifier)."""
    return """CASE
        WHEN o.basisOfRecord = 'MATERIAL_CITATION' THEN 'material_citation'
        WHEN m.gbifID IS NULL THEN 'no_media'
        WHEN url IS NULL THEN 'no_media_url'
        WHEN m.type IS NOT NULL AND m.type <> 'StillImage' THEN 'not_still_image'
        WHEN lower(m.format) = 'application/ld+json' THEN 'iiif_manifest_unresolved'
        WHEN lower(m.format) = 'dzi' OR url LIKE '%.dzi' THEN 'dzi_unsupported'
        WHEN m.type IS NULL AND coalesce(m.format, '') <> '' AND lower(m.format) NOT LIKE '%image%'
            THEN 'not_still_image'
        WHEN NOT (lower(url) LIKE 'http://%' OR lower(url) LIKE 'https://%') THEN 'unsupported_url_scheme'
        END"""


def _image_type_sql() -> str:
    """`gbif.image_type`, in SQL."""
    publishers = " OR ".join(
        f"contains(lower(coalesce(o.publisher, o.institutionCode, '')), '{p}')"
        for p in CITIZEN_SCIENCE_PUBLISHERS
    )
    museum = ", ".join(f"'{b}'" for b in sorted(MUSEUM_BASES))
    return f"""CASE
        WHEN contains(lower(coalesce(o.eventRemarks, '')), 'camera trap')
          OR contains(lower(coalesce(o.eventRemarks, '')), 'trigger sensitivity') THEN 'camera_trap'
        WHEN {publishers} THEN 'citizen_science'
        WHEN o.basisOfRecord IN ({museum}) THEN 'museum_specimen'
        ELSE 'other' END"""


def _clean(col: str) -> str:
    """`etl.ingest.records.clean` in SQL: blank and NaN-like strings become NULL."""
    return (
        f"CASE WHEN lower(trim({col})) IN ('', 'nan', 'null', 'none', 'n/a') THEN NULL ELSE trim({col}) END"
    )


def media_query(con: duckdb.DuckDBPyConnection, occurrence: Path, multimedia: Path | None) -> str:
    occ = conformed_select(
        con, f"read_csv({sql_path(occurrence)}, {CSV_OPTS})", OCC_REQUIRED, OCC_OPTIONAL, occurrence
    )
    if multimedia is not None:
        mm = conformed_select(
            con, f"read_csv({sql_path(multimedia)}, {CSV_OPTS})", MM_REQUIRED, MM_OPTIONAL, multimedia
        )
    else:  # an archive without media: every occurrence becomes a `no_media` row
        mm = (
            "SELECT "
            + ", ".join(f'NULL::VARCHAR AS "{c}"' for c in (*MM_REQUIRED, *MM_OPTIONAL))
            + " WHERE false"
        )
    con.execute(f"CREATE OR REPLACE TEMP VIEW occ AS {occ}")
    # File order is the media order (the API's list order): a medium without a URL is keyed by its position.
    con.execute(f"""CREATE OR REPLACE TEMP VIEW mm AS
        SELECT *, row_number() OVER (PARTITION BY gbifID ORDER BY file_pos) - 1 AS media_index
        FROM (SELECT *, row_number() OVER () AS file_pos FROM ({mm}))""")
    licences = con.execute(
        "SELECT DISTINCT l FROM (SELECT license AS l FROM mm UNION SELECT license FROM occ) WHERE l IS NOT NULL"
    ).fetchall()
    con.register("licence_map", pa.table({
        "verbatim": [r[0] for r in licences], "code": [normalize_license(r[0]) for r in licences],
    }))  # fmt: skip
    ranks = ", ".join(
        f"{_clean(f'o.{c}')} AS verbatim_{c}" for c in ("kingdom", "phylum", "order", "family", "genus")
    )
    media_key = "coalesce(url, (media_index)::VARCHAR)"
    return f"""
        WITH joined AS (
            SELECT o, m, {_clean("m.identifier")} AS url, coalesce(m.media_index, -1) AS media_index,
                   coalesce(m.license, o.license) AS licence_raw
            FROM occ o LEFT JOIN mm m ON m.gbifID = o.gbifID
        ), rows AS (
            SELECT *, to_json({{'occurrence': o, 'media': m}}) AS payload FROM joined
        )
        SELECT
            {_uuid5_sql(f"'gbif' || chr(31) || o.gbifID || chr(31) || {media_key}")} AS record_id,
            'gbif' AS source, o.gbifID AS source_id, o.gbifID AS occurrence_id,
            media_index::INT AS media_index, url AS media_url, m.format AS media_format,
            coalesce(l.code, 'unknown') AS license, licence_raw AS license_verbatim,
            coalesce(m.rightsHolder, o.rightsHolder) AS rights_holder, m.creator AS creator,
            coalesce(o.publisher, m.publisher) AS publisher, o.datasetKey AS dataset_key,
            o.basisOfRecord AS basis_of_record, {_image_type_sql()} AS img_type,
            {_clean("o.scientificName")} AS verbatim_name, {_clean("o.taxonRank")} AS verbatim_rank,
            {ranks}, {_clean('o."class"')} AS verbatim_class, {_clean("o.species")} AS verbatim_species,
            {_clean("o.vernacularName")} AS vernacular_name, o.eventDate AS event_date,
            NULL::INT[] AS crop_box, {_drop_reason_sql()} AS drop_reason,
            sha1(payload::VARCHAR) AS payload_hash, payload::VARCHAR AS payload
        FROM rows LEFT JOIN licence_map l ON l.verbatim = licence_raw
    """


def malformed_rows(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One `malformed_line` row per line DuckDB rejected, keyed by file and line number."""
    rows = con.execute(
        """SELECT s.file_path, e.line, e.error_type, e.error_message, e.csv_line
           FROM reject_errors e JOIN reject_scans s USING (scan_id)
           QUALIFY row_number() OVER (PARTITION BY s.file_path, e.line ORDER BY e.column_idx) = 1
           ORDER BY 1, 2"""
    ).fetchall()
    out: dict[str, list] = {f.name: [] for f in RAW_RECORDS if f.name not in ("run_id", "ingested_at")}
    for file_path, line, kind, message, text in rows:
        source_id = f"{Path(file_path).name}:{line}"
        payload = {"file": Path(file_path).name, "line": line, "error": f"{kind}: {message}", "text": text}
        values = {
            "record_id": record_id("gbif", source_id, -1),
            "source": "gbif",
            "source_id": source_id,
            "media_index": -1,
            "drop_reason": "malformed_line",
            "payload": json.dumps(payload, sort_keys=True, default=str),
            "payload_hash": payload_hash(payload),
        }
        for name in out:
            out[name].append(values.get(name))
    schema = pa.schema([f for f in RAW_RECORDS if f.name in out])
    return pa.Table.from_pydict(out, schema=schema)


def pages(cfg: IngestConfig, checkpoint: dict[str, Any], workdir: Path) -> Iterator[Page]:
    occurrence, multimedia, checksum = archive_files(Path(cfg.path), workdir, cfg.max_member_bytes)
    if checkpoint.get("archive") == checksum and checkpoint.get("done"):
        return  # this very archive was ingested completely: nothing can be new
    # A killed run is resumed by reading the archive again: batches come in no fixed order (parallel joins),
    # and the stage's anti-join on (record_id, payload_hash) drops what the killed run already committed.
    con = duckdb.connect()
    try:
        spill = workdir / "spill"
        spill.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {sql_path(spill)}")
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")  # bounded: joins and windows spill to disk
        reader = con.sql(media_query(con, occurrence, multimedia)).to_arrow_reader(BATCH_ROWS)
        batches, seen = 0, 0
        for batch in reader:
            batches += 1
            seen += batch.num_rows
            limit_hit = cfg.limit is not None and seen >= cfg.limit
            yield Page([], {"archive": checksum, "batches": batches}, table=pa.Table.from_batches([batch]))
            if limit_hit:
                return
        done = {"archive": checksum, "batches": batches, "done": True, "high_water": True}
        yield Page([], done, complete=True, table=malformed_rows(con))
    finally:
        con.close()
