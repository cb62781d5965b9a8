"""Shared pieces of the raw-record contract: deterministic ids, licence normalisation, row building."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from warehouse.schemas import RAW_RECORDS

RECORD_NAMESPACE = uuid.UUID("6f1c2b0e-5b7a-4a8e-9a53-0e1f3c7d2b11")


def record_id(source: str, source_id: str, media_key: str | int) -> str:
    """UUIDv5 over (source, source record id, media URL or index): stable across re-ingests."""
    return str(uuid.uuid5(RECORD_NAMESPACE, f"{source}\x1f{source_id}\x1f{media_key}"))


def payload_hash(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z\-]+)/(\d\.\d)", re.I)
_CC_CODE = re.compile(r"^(?:cc[\s_\-]?)?(by(?:[\s_\-](?:nc|sa|nd))*|zero|0)(?:[\s_\-]+(\d)[\._](\d))?$", re.I)
_PUBLIC_DOMAIN = {"public domain", "pd", "no known copyright restrictions", "cc0", "cc0 1.0", "cc0_1_0"}


def normalize_license(value: str | None) -> str:
    """Canonical SPDX-like code (`CC-BY-4.0`, `CC0-1.0`, `CC-BY-NC`, ...) or `unknown`; never raises."""
    if value is None or not str(value).strip():
        return "unknown"
    text = str(value).strip()
    lower = text.lower()
    if lower in _PUBLIC_DOMAIN or "publicdomain/mark" in lower:
        return "CC0-1.0" if "cc0" in lower else "public-domain"
    if m := _CC_URL.search(text):
        kind, code, version = m.group(1).lower(), m.group(2).lower(), m.group(3)
        if kind == "publicdomain":
            return "CC0-1.0" if code == "zero" else "public-domain"
        return f"CC-{code.upper()}-{version}"
    if m := _CC_CODE.match(lower.replace("cc-", "cc ").strip()):
        code = re.sub(r"[\s_]+", "-", m.group(1)).upper()
        if code in ("ZERO", "0"):
            return "CC0-1.0"
        return f"CC-{code}-{m.group(2)}.{m.group(3)}" if m.group(2) else f"CC-{code}"
    return "unknown"


def make_rows(rows: list[dict[str, Any]], run_id: str) -> pa.Table:
    """Fill the contract's columns (missing ones null) and stamp run id and time."""
    now = datetime.now(UTC)
    cols: dict[str, list] = {f.name: [] for f in RAW_RECORDS}
    for r in rows:
        r = {**r, "run_id": run_id, "ingested_at": now}
        if "payload" in r and not isinstance(r["payload"], str):
            r["payload"] = json.dumps(r["payload"], sort_keys=True, default=str)
        if not r.get("payload_hash"):
            r["payload_hash"] = payload_hash(r.get("payload") or "")
        for name in cols:
            cols[name].append(r.get(name))
    return pa.Table.from_pydict(cols, schema=RAW_RECORDS)


def stamp_table(table: pa.Table, run_id: str) -> pa.Table:
    """Contract columns from a set-wise reader, stamped with run id and time, in the contract's order."""
    now = datetime.now(UTC)
    n = table.num_rows
    table = table.append_column("run_id", pa.array([run_id] * n, pa.string()))
    table = table.append_column("ingested_at", pa.array([now] * n, RAW_RECORDS.field("ingested_at").type))
    return table.select(RAW_RECORDS.names).cast(RAW_RECORDS)


def clean(value: Any) -> str | None:
    """Blank, whitespace and NaN-like strings become None."""
    if value is None:
        return None
    text = str(value).strip()
    return text if text and text.lower() not in {"nan", "null", "none", "n/a"} else None
