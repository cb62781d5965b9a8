"""Takedown requests: which records one covers (by id, or by an expression over `raw_records`), and which
existing versions still hold taken-down records. The shard stage leaves them out of every later version."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from warehouse import writers
from warehouse.catalog import Catalog, check_expression, lock_down


def takedown_records(
    catalog: Catalog,
    reason: str,
    records: list[str] | None = None,
    where: str | None = None,
    requested_by: str | None = None,
) -> dict[str, Any]:
    """Record a request over the given record ids, or the records whose `raw_records` row matches `where`
    (run locked down); unknown ids are a clear error, nothing is recorded then."""
    if not reason.strip():
        raise ValueError("a takedown needs --reason (who asked, and why)")
    if bool(records) == bool(where):
        raise ValueError("give --record ID ... or --where EXPR (over raw_records), one of them")
    with catalog.snapshot() as con:
        lock_down(con, catalog.home)
        if where:
            sql = f"SELECT DISTINCT record_id FROM raw_records WHERE ({check_expression(where, '--where')})"
            ids = [r for (r,) in con.execute(sql).fetchall()]
        else:
            wanted = list(dict.fromkeys(records or []))
            known = {
                r
                for (r,) in con.execute(
                    "SELECT DISTINCT record_id FROM raw_records_history WHERE list_contains(?, record_id)",
                    [wanted],
                ).fetchall()
            }
            unknown = [r for r in wanted if r not in known]
            if unknown:
                raise LookupError(f"no such record(s): {', '.join(unknown[:10])}; nothing recorded")
            ids = wanted
    if not ids:
        raise LookupError(f"--where {where!r} matches no record; nothing recorded")
    request = f"takedown-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    writers.record_takedown(catalog, request, ids, reason.strip(), requested_by)
    return {"request_id": request, "records": len(ids), "reason": reason.strip()}


def affected_versions(catalog: Catalog) -> list[dict[str, Any]]:
    """The versions that still hold taken-down records, with how many each holds."""
    with catalog.connect() as con:
        cur = con.execute(
            """SELECT s.version, count(DISTINCT s.record_id) AS taken_down, list(DISTINCT t.request_id) AS requests
               FROM shard_samples s JOIN takedowns t USING (record_id) GROUP BY 1 ORDER BY 1"""
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
