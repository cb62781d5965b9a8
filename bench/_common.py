"""Shared helpers for the benchmarks: timing, peak memory, JSON output."""

from __future__ import annotations

import json
import resource
import sys
import time
from contextlib import contextmanager


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(out: dict, key: str):
    t0 = time.perf_counter()
    yield
    out[key] = round(time.perf_counter() - t0, 3)


def emit(result: dict) -> None:
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def demo_version_missing(home: str, bench: str) -> bool:
    """True (after printing a `skipped` JSON line) when the demo's dataset version is not under `home`."""
    from pathlib import Path

    if (Path(home) / "shards" / "sample-v1" / "manifest.json").exists():
        return False
    emit({"bench": bench, "skipped": f"needs the demo's dataset version under {home}: run make demo"})
    return True


def fetch_slice(unit: dict, config):
    """A work unit for the fetch benchmarks: rows [start, start + n) of a Parquet file fetched, the part
    written by the worker (as the stage's workers write theirs), the ok count sent back."""
    import pyarrow as pa

    from etl.fetch.stage import FETCH_OUTPUT, fetch_partition
    from warehouse.lake import read_rows, write_parquet_atomic

    rows = read_rows(unit["inputs"], unit["start"], unit["n"])
    out = pa.Table.from_batches(list(fetch_partition(iter(rows.to_batches()), config)), schema=FETCH_OUTPUT)
    if unit.get("out"):
        write_parquet_atomic(out, unit["out"])
    return pa.table({"ok": [out.column("status").to_pylist().count("ok")]})


def slice_units(table, folder, rows_per_unit: int, out: str | None = None) -> list[dict]:
    """Write `table` to `folder/inputs.parquet` and return units of `rows_per_unit` rows over it."""
    import pyarrow.parquet as pq

    inputs = f"{folder}/inputs.parquet"
    pq.write_table(table, inputs, row_group_size=rows_per_unit)
    return [
        {"inputs": inputs, "start": o, "n": min(rows_per_unit, table.num_rows - o),
         "out": f"{out}/part-{o:08d}.parquet" if out else None}
        for o in range(0, table.num_rows, rows_per_unit)
    ]  # fmt: skip
