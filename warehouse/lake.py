"""Atomic Parquet writes into the lake: workers write part files, never the catalog."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.contracts import check_name
from warehouse.schemas import BLOB_SUFFIX, IMAGE_BLOBS, LAKE_TABLES, duckdb_type

PART_ROW_GROUP_ROWS = 65_536  # a point lookup by record_id reads one row group of a part, not the part


def write_parquet_atomic(
    table: pa.Table, path: str | Path, *, compression: str = "zstd", row_group_rows: int | None = None
) -> Path:
    """Write `table` to `path` through a temporary name and a rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression=compression, row_group_size=row_group_rows)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_part(lake: Path, table: str, data: pa.Table, *, partition: dict[str, str], part: str) -> Path:
    """Write `data` as one part of the lake table `table` (a `schemas.LAKE_TABLES` key), atomically.

    The columns are taken and cast to the table's schema (a missing column is an error, not a NULL column);
    `partition` must name the table's partition keys, in order; values and `part` must be names. Rows are
    sorted by `record_id` where the table has one: with each row group's min and max, DuckDB answers
    `WHERE record_id = ?` (through the current views and `record_lineage`) without reading the others."""
    path = part_path(lake, table, partition, part)
    spec = LAKE_TABLES[table]
    missing = [n for n in spec.schema.names if n not in data.column_names]
    if missing:
        raise ValueError(f"rows for {table} lack column(s) {', '.join(missing)}")
    rows = data.select(spec.schema.names).cast(spec.schema)
    if "record_id" in spec.schema.names:
        rows = rows.sort_by("record_id")
    return write_parquet_atomic(rows, path, row_group_rows=PART_ROW_GROUP_ROWS)


def typed_select(table: str, sql: str) -> str:
    """`sql`'s rows as the lake table `table`'s columns: each taken by name and cast to its type (a missing
    one is DuckDB's binder error, naming it), sorted by `record_id` where the table has one."""
    schema = LAKE_TABLES[table].schema
    cols = ", ".join(f'CAST("{f.name}" AS {duckdb_type(f.type)}) AS "{f.name}"' for f in schema)
    order = ' ORDER BY "record_id"' if "record_id" in schema.names else ""  # see `write_part`
    return f"SELECT {cols} FROM ({sql}){order}"


def export_part(
    con,
    lake: Path,
    table: str,
    sql: str,
    *,
    partition: dict[str, str],
    part: str,
    row_group_rows: int = PART_ROW_GROUP_ROWS,
) -> Path:
    """Write the rows of `sql`, run on the DuckDB connection `con`, as one part of the lake table `table`,
    atomically: DuckDB streams them to a temporary file that is renamed into place; no row passes through
    Python."""
    path = part_path(lake, table, partition, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    target = str(tmp).replace("'", "''")
    options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_rows)}"
    try:
        con.execute(f"COPY ({typed_select(table, sql)}) TO '{target}' ({options})")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def part_path(lake: Path, table: str, partition: dict[str, str], part: str) -> Path:
    """Where a part of the lake table `table` lies; checks the table, its partition keys and the names."""
    if table not in LAKE_TABLES:
        raise ValueError(f"no lake table {table!r}; known: {', '.join(LAKE_TABLES)}")
    spec = LAKE_TABLES[table]
    if tuple(partition) != spec.partitions:
        raise ValueError(f"lake table {table} is partitioned by {spec.partitions}, not {tuple(partition)}")
    folder = Path(lake, spec.folder, *(f"{k}={check_name('partition', v)}" for k, v in partition.items()))
    return folder / f"{check_name('part', part)}.parquet"


def write_image_blob(home: Path, source: str, part: str, jpegs: list[bytes | None]) -> tuple[str, list]:
    """Write the JPEGs of one fetch part back to back as `lake/image_blobs/source=<source>/<part>.jpgs`;
    return its path relative to `home` and each image's offset (None where there is no image)."""
    rel = Path("lake", IMAGE_BLOBS, f"source={check_name('partition', source)}", check_name("part", part))
    rel = rel.with_name(rel.name + BLOB_SUFFIX)
    offsets: list[int | None] = []
    position = 0
    for data in jpegs:
        offsets.append(position if data else None)
        position += len(data) if data else 0
    write_bytes_atomic(b"".join(d for d in jpegs if d), home / rel)
    return str(rel), offsets


def read_image_blobs(home: Path, refs: list[tuple[str, int, int]]) -> list[bytes]:
    """The bytes at (blob, offset, size) for each ref, in the order given: one open per blob file and
    reads in file order, so a shard's images cost their own bytes, not their parts'."""
    out: list[bytes] = [b""] * len(refs)
    by_blob: dict[str, list[int]] = {}
    for i, (blob, _, _) in enumerate(refs):
        by_blob.setdefault(blob, []).append(i)
    for blob, idx in by_blob.items():
        with open(home / blob, "rb") as fh:
            for i in sorted(idx, key=lambda i: refs[i][1]):
                _, offset, size = refs[i]
                fh.seek(offset)
                data = fh.read(size)
                if len(data) != size:
                    raise OSError(f"{blob}: {size} bytes at {offset} expected, {len(data)} found")
                out[i] = data
    return out


def read_rows(path: str | Path, start: int, n: int, columns: list[str] | None = None) -> pa.Table:
    """Rows [start, start + n) of a Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    groups, first, offset = [], None, 0
    for g in range(f.metadata.num_row_groups):
        rows = f.metadata.row_group(g).num_rows
        if offset + rows > start and offset < start + n:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    if not groups:
        return (
            f.schema_arrow.empty_table() if columns is None else f.schema_arrow.empty_table().select(columns)
        )
    table = f.read_row_groups(groups, columns=columns)
    return table.slice(start - first, n)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def new_run_id(stage: str) -> str:
    """Sortable, unique run id: stage, UTC time, and a random suffix."""
    return f"{stage}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def remove_tree(path: str | Path, within: str | Path) -> None:
    """Remove `path` (a folder, or a link: only the link) if it lies strictly inside `within`; refuse
    anything else. Every deletion of the pipeline's own folders goes through here."""
    path, within = Path(path), Path(within).resolve()
    parent = path.parent.resolve()
    target = parent / path.name
    if path.name in ("", ".", "..") or target == within or not target.is_relative_to(within):
        raise ValueError(f"refusing to remove {path}: it is not inside {within}")
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
