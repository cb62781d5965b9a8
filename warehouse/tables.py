"""Reading other people's tables: make a delimited file's columns look like the ones we expect."""

from __future__ import annotations

from pathlib import Path

import duckdb


def sql_path(path: Path | str) -> str:
    """A file path as a SQL string literal (quotes doubled: folder names can hold apostrophes)."""
    return "'" + str(path).replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A column name from someone's file as a SQL identifier: double-quoted, inner quotes doubled, so a
    header like `x" FROM t; COPY ...` is one odd column name and never SQL. Control characters (NUL, line
    breaks) have no business in a header and are refused."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"column name {name!r} holds control characters; refused")
    return '"' + name.replace('"', '""') + '"'


def conformed_select(
    con: duckdb.DuckDBPyConnection,
    relation: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    path: Path,
) -> str:
    """A SELECT over `relation` (a table name or a parenthesised query) with namespace prefixes dropped from
    column names (`dwc:taxonID` -> `taxonID`, as Catalogue of Life writes them) and absent `optional` columns
    added as NULL. A missing `required` column is a clear error naming the file."""
    columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
    names: dict[str, str] = {}
    for col in columns:
        bare = col.rsplit(":", 1)[-1]
        # Keep the prefixed name when dropping the prefix would collide with another column.
        clash = bare != col and (bare in columns or bare in names.values())
        names[col] = col if clash else bare
    present = set(names.values())
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
    select = [f"{quote_ident(col)} AS {quote_ident(bare)}" for col, bare in names.items()]
    select += [f"NULL::VARCHAR AS {quote_ident(c)}" for c in optional if c not in present]
    return f"SELECT {', '.join(select)} FROM {relation}"
