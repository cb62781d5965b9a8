"""One image against the corpus: hash it as fetch does, find every catalog image within Hamming distance k
of its pHash (and, with `pdq_k`, within `pdq_k` of 256 bits of its PDQ hash, for the images fetched with
`--pdq`), and say what the catalog knows of each hit (source, licence, dedup decision, evaluation leak, the
dataset versions that hold it).

The search is one scan of the image table's 64-bit hashes in DuckDB (`bit_count(phash XOR q) <= k`): exact,
bounded in memory whatever the corpus size, and a few hundred milliseconds at a million hashes on this
machine; the multi-index search of the dedup stage pays off for all-pairs, not for a handful of queries."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from etl.dedup.stage import pdq_words
from etl.fetch.images import ImageConfig, process_image
from warehouse.catalog import Catalog

QUERY_IMAGE = ImageConfig(min_side=1, encode=False)  # hashes only, like an evaluation set's images


def image_hashes(path: str | Path, pdq: bool = False) -> tuple[int, str | None]:
    """The 64-bit pHash of an image file as the catalog stores it (signed int64), computed as fetch does,
    and with `pdq` its 256-bit PDQ hash (hex)."""
    data = Path(path).read_bytes()
    processed = process_image(data, replace(QUERY_IMAGE, pdq=pdq))
    if processed.status != "ok" or processed.phash is None:
        raise ValueError(
            f"{path}: not an image the pipeline can hash ({processed.status}: {processed.error})"
        )
    return int(processed.phash), processed.pdq_hex


def image_hash(path: str | Path) -> int:
    return image_hashes(path)[0]


# The hits: within k of the pHash, or (when a PDQ hash is asked for) within pdq_k of the PDQ hash.
PHASH_HITS = """
        SELECT record_id, bit_count(xor(phash, $phash::BIGINT)) AS distance, NULL::INT AS pdq_distance
        FROM images WHERE status = 'ok' AND phash IS NOT NULL AND bit_count(xor(phash, $phash::BIGINT)) <= $k"""
PDQ_HITS = f"""
        SELECT record_id, bit_count(xor(phash, $phash::BIGINT)) AS distance,
               (bit_count(xor(w0, $q0::UBIGINT)) + bit_count(xor(w1, $q1::UBIGINT))
                + bit_count(xor(w2, $q2::UBIGINT)) + bit_count(xor(w3, $q3::UBIGINT)))::INT AS pdq_distance
        FROM (SELECT record_id, phash, pdq_hex, {pdq_words("pdq_hex")} FROM images
              WHERE status = 'ok' AND phash IS NOT NULL)
        WHERE bit_count(xor(phash, $phash::BIGINT)) <= $k OR (pdq_hex IS NOT NULL AND pdq_distance <= $pdq_k)"""
HITS_SQL = """
    WITH hits AS ({hits}
    ), versions AS (
        SELECT record_id, list(DISTINCT version ORDER BY version) AS versions
        FROM shard_samples WHERE record_id IN (SELECT record_id FROM hits) GROUP BY record_id
    )
    SELECT h.record_id, h.distance, h.pdq_distance, r.source, r.source_id, r.license, r.media_url,
           d.kept AS dedup_kept, d.reason AS dedup_reason, d.duplicate_of,
           coalesce(starts_with(d.reason, 'eval_leak:'), false) AS eval_leak,
           coalesce(v.versions, []::VARCHAR[]) AS versions
    FROM hits h
    LEFT JOIN raw_records r USING (record_id)
    LEFT JOIN dedup_decisions d USING (record_id)
    LEFT JOIN versions v USING (record_id)
    ORDER BY h.distance, h.pdq_distance NULLS LAST, h.record_id
"""


def query_images(
    catalog: Catalog, paths: list[str | Path], k: int = 8, pdq_k: int | None = None
) -> list[dict[str, Any]]:
    """For each image file, its hashes and every catalog image within `k` bits (0-64) of its pHash, or with
    `pdq_k` also within `pdq_k` bits (0-256) of its PDQ hash (the images fetched with `--pdq`), nearest first."""
    if not 0 <= k <= 64:
        raise ValueError(f"k is a Hamming distance between 64-bit hashes: 0 to 64, not {k}")
    if pdq_k is not None and not 0 <= pdq_k <= 256:
        raise ValueError(f"pdq_k is a Hamming distance between 256-bit hashes: 0 to 256, not {pdq_k}")
    sql = HITS_SQL.format(hits=PHASH_HITS if pdq_k is None else PDQ_HITS)
    out = []
    with catalog.snapshot() as con:
        for path in paths:
            h, pdq = image_hashes(path, pdq=pdq_k is not None)
            params: dict[str, Any] = {"phash": h, "k": k}
            if pdq_k is not None:
                words = [int(pdq[16 * w : 16 * (w + 1)], 16) for w in range(4)]
                params |= {"pdq_k": pdq_k, **{f"q{w}": words[w] for w in range(4)}}
            cur = con.execute(sql, params)
            cols = [c[0] for c in cur.description]
            hits = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
            out.append({"image": str(path), "phash": h, "pdq": pdq, "k": k, "pdq_k": pdq_k, "hits": hits})
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
