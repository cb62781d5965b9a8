"""Ingest stage: run a connector page by page, write only new or changed rows in parts of bounded size,
checkpoint the last page each part holds.

Re-ingesting the same payload adds nothing (anti-join on record_id + payload_hash); a changed payload adds a
new version of the row (the `raw_records` view shows the latest, `raw_records_history` all). A killed run
resumes from the last page whose rows are written.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pyarrow as pa

from etl.http import PoliteClient
from etl.ingest.records import make_rows, stamp_table
from etl.ingest.sources import IngestConfig, get_connector
from warehouse.catalog import Catalog
from warehouse.stage_runs import StageRun
from warehouse.writers import load_checkpoint, save_checkpoint


def _resume_point(catalog: Catalog, cfg: IngestConfig) -> dict[str, Any]:
    stored = load_checkpoint(catalog, cfg.source, cfg.query_key())
    if stored is None:
        return {}
    checkpoint, complete = stored
    if complete and not checkpoint.get("high_water"):
        return {}  # the last run finished: page from the start again (unchanged rows are skipped)
    return checkpoint  # a run to resume, or a high-water mark (e.g. the checksum of an archive done)


def _new_rows(catalog: Catalog, table: pa.Table, source: str, pending: pa.Table) -> pa.Table:
    """Rows whose (record_id, payload_hash) is neither stored yet nor `pending` (rows of earlier pages
    not written yet), one per record id. Only the key columns go through DuckDB; the payloads stay in Arrow
    and are taken by position."""
    keys = table.select(["record_id", "payload_hash", "media_index"]).append_column(
        "pos", pa.array(range(table.num_rows), pa.int64())
    )
    with catalog.connect() as con:
        con.register("batch_keys", keys)
        con.register("pending_keys", pending)
        keep = con.sql(
            """SELECT pos FROM batch_keys b
               WHERE NOT EXISTS (SELECT 1 FROM raw_records_history h
                                 WHERE h.source = ? AND h.record_id = b.record_id
                                   AND h.payload_hash = b.payload_hash)
                 AND NOT EXISTS (SELECT 1 FROM pending_keys p
                                 WHERE p.record_id = b.record_id AND p.payload_hash = b.payload_hash)
               QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY media_index, pos) = 1
               ORDER BY pos""",
            params=[source],
        ).to_arrow_table()
    if keep.num_rows == table.num_rows:
        return table  # all new, and sorted by position: no copy of the payloads
    return table.take(keep.column("pos"))


# A part is written when the new rows of the pages read reach either bound (or the source ends): parts of
# bounded size, not one per API page (GBIF pages hold 300 records), and a bounded buffer in the driver.
PART_ROWS = 100_000
PART_BYTES = 64 * 2**20
_KEYS = pa.schema([("record_id", pa.string()), ("payload_hash", pa.string())])


def run_ingest(
    catalog: Catalog, cfg: IngestConfig, client: PoliteClient | None = None, progress: bool = False
) -> dict[str, Any]:
    connector = get_connector(cfg.source)
    client = client or PoliteClient(cfg.client_config())
    client.requests, client.max_requests = 0, cfg.max_pages
    if cfg.work_dir is None:
        cfg = replace(cfg, work_dir=str(catalog.home / "cache" / "ingest"))
    with StageRun(
        catalog,
        "ingest",
        config={
            "source": cfg.source,
            "api_url": cfg.api_url,
            "path": cfg.path,
            "params": cfg.params,
            "limit": cfg.limit,
        },
        lock=f"ingest-{cfg.source}",  # one run per source at a time; different sources run side by side
    ) as run:
        # Read under the lock: a run that waited for another must start from where that one ended.
        checkpoint = _resume_point(catalog, cfg)
        run.details["resumed_from"] = checkpoint
        unchanged = 0
        pending: list[pa.Table] = []  # new rows of the pages read since the last part
        first_page = 0

        def flush(checkpoint: dict[str, Any], complete: bool) -> None:
            """Write the pending rows as one part, then commit the checkpoint of the last page they
            came from: a kill before the part loses only pages that the rerun reads again."""
            if pending:
                catalog.write_part(
                    "raw_records_history",
                    pa.concat_tables(pending, promote_options="permissive"),
                    partition={"source": cfg.source, "ingest": run.run_id},
                    part=f"part-{first_page:05d}",
                )
                pending.clear()
            save_checkpoint(catalog, cfg.source, cfg.query_key(), checkpoint, complete, run.run_id)

        last: tuple[dict[str, Any], bool] | None = None
        for page_no, page in enumerate(connector(client, cfg, checkpoint)):
            table = None
            if page.table is not None:
                table = stamp_table(page.table, run.run_id)
            elif page.rows:
                table = make_rows(page.rows, run.run_id)
            run.n_in += table.num_rows if table is not None else 0
            if table is not None and table.num_rows:
                keys = (
                    pa.concat_tables([t.select(_KEYS.names).cast(_KEYS) for t in pending])
                    if pending
                    else _KEYS.empty_table()
                )
                fresh = _new_rows(catalog, table, cfg.source, keys)
                unchanged += table.num_rows - fresh.num_rows
                if fresh.num_rows:
                    if not pending:
                        first_page = page_no
                    pending.append(fresh)
                    run.n_out += fresh.num_rows
                    for reason in fresh.column("drop_reason").to_pylist():
                        if reason:
                            run.drop(reason)
            last = (page.checkpoint, page.complete)
            rows = sum(t.num_rows for t in pending)
            if not pending or rows >= PART_ROWS or sum(t.nbytes for t in pending) >= PART_BYTES:
                flush(*last)
                last = None
            if progress:
                run.log.info(
                    "%s: page %d, %d rows read, %d new", cfg.source, page_no + 1, run.n_in, run.n_out
                )
        if last is not None:
            flush(*last)
        if client.retries:
            run.error("http_retries", client.retries)
        run.message = f"{unchanged} rows unchanged since an earlier ingest"
    return run.summary() | {"unchanged": unchanged}
