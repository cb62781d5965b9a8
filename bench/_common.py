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
