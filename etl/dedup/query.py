"""One image against the corpus: hash it as fetch does, find every catalog image within Hamming distance k
of its pHash, and say what the catalog knows of each hit (source, licence, dedup decision, evaluation leak,
the dataset versions that hold it).

The search is one scan of the image table's 64-bit hashes in DuckDB (`bit_count(phash XOR q) <= k`): exact,
bounded in memory whatever the corpus size, and a few hundred milliseconds at a million hashes on this
machine; the multi-index search of the dedup stage pays off for all-pairs, not for a handful of queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etl.fetch.images import ImageConfig, process_image
from warehouse.catalog import Catalog

QUERY_IMAGE = ImageConfig(min_side=1, encode=False)  # hashes only, like an evaluation set's images


def image_hash(path: str | Path) -> int:
    """The 64-bit pHash of an image file as the catalog stores it (signed int64), computed as fetch does."""
    data = Path(path).read_bytes()
    processed = process_image(data, QUERY_IMAGE)
    if processed.status != "ok" or processed.phash is None:
        raise ValueError(
            f"{path}: not an image the pipeline can hash ({processed.status}: {processed.error})"
        )
    return int(processed.phash)


HITS_SQL = """
    WITH hits AS (
        SELECT record_id, bit_count(xor(phash, ?::BIGINT)) AS distance
        FROM images WHERE status = 'ok' AND phash IS NOT NULL AND bit_count(xor(phash, ?::BIGINT)) <= ?
    ), versions AS (
        SELECT record_id, list(DISTINCT version ORDER BY version) AS versions
        FROM shard_samples WHERE record_id IN (SELECT record_id FROM hits) GROUP BY record_id
    )
    SELECT h.record_id, h.distance, r.source, r.source_id, r.license, r.media_url,
           d.kept AS dedup_kept, d.reason AS dedup_reason, d.duplicate_of,
           coalesce(starts_with(d.reason, 'eval_leak:'), false) AS eval_leak,
           coalesce(v.versions, []::VARCHAR[]) AS versions
    FROM hits h
    LEFT JOIN raw_records r USING (record_id)
    LEFT JOIN dedup_decisions d USING (record_id)
    LEFT JOIN versions v USING (record_id)
    ORDER BY h.distance, h.record_id
"""


def query_images(catalog: Catalog, paths: list[str | Path], k: int = 8) -> list[dict[str, Any]]:
    """For each image file, its hash and every catalog image within `k` bits (0-64), nearest first."""
    if not 0 <= k <= 64:
        raise ValueError(f"k is a Hamming distance between 64-bit hashes: 0 to 64, not {k}")
    out = []
    with catalog.snapshot() as con:
        for path in paths:
            h = image_hash(path)
            cur = con.execute(HITS_SQL, [h, h, k])
            cols = [c[0] for c in cur.description]
            hits = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
            out.append({"image": str(path), "phash": h, "k": k, "hits": hits})
    return out


def versions_holding(catalog: Catalog, record_id: str) -> list[dict[str, Any]]:
    """The dataset versions, splits and shards that hold a record."""
    with catalog.snapshot() as con:
        cur = con.execute(
            "SELECT version, split, shard, key FROM shard_samples WHERE record_id = ? ORDER BY version, split",
            [record_id],
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
