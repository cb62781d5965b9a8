"""`tol dedup query`: one image against N catalog hashes (default 1 M), the time per query and peak RSS.

The catalog's image table is written directly as one lake part of N synthetic rows (random 64-bit pHashes,
one of them the query's own hash and a few within 4 bits), so the figure is the query's cost alone: the
snapshot, the scan of the image view, and the joins for the hits."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, peak_rss_mb

from etl.dedup.query import image_hash, query_images
from warehouse.catalog import open_catalog
from warehouse.schemas import IMAGES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hashes", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=5)
    args = ap.parse_args()
    n = args.hashes
    with tempfile.TemporaryDirectory() as tmp:
        catalog = open_catalog(Path(tmp) / "home")
        image = Path(tmp) / "q.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(image)
        q = image_hash(image)
        phash = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
        phash[0] = q
        for i in range(1, 6):  # a few planted near hits, i bits away
            phash[i] = q ^ ((1 << i) - 1)
        rows = {f.name: pa.nulls(n, f.type) for f in IMAGES}
        rows |= {
            "record_id": pa.array([f"r{i:08d}" for i in range(n)]),
            "status": pa.array(["ok"] * n),
            "phash": pa.array(phash),
            "run_id": pa.array(["fetch-bench"] * n),
            "fetched_at": pa.array([datetime.now(UTC)] * n, IMAGES.field("fetched_at").type),
        }
        table = pa.table(rows, schema=IMAGES)
        catalog.write_part("images_history", table, partition={"source": "gbif"}, part="part-0")
        del table, rows
        times = []
        for _ in range(args.queries):
            t0 = time.perf_counter()
            (out,) = query_images(catalog, [image], k=8)
            times.append(time.perf_counter() - t0)
        emit(
            {
                "bench": "dedup_query",
                "hashes": n,
                "k": 8,
                "hits": len(out["hits"]),
                "seconds_per_query_median": round(float(np.median(times)), 3),
                "seconds_per_query_first": round(times[0], 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )


if __name__ == "__main__":
    main()
