"""Peak memory of the fetch stage on very large images, with and without the per-process pixel budget.

N photos of S megapixels (PNG, so no reduced-size JPEG decode helps) are read through `file://` by the local
executor (2 worker processes x 8 threads, the defaults) twice: with the budget off (what fetch did before)
and at the default `max_pixels_in_flight`. Prints JSON: seconds and peak RSS of the whole process tree.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import emit, fetch_slice, slice_units
from PIL import Image

from etl.executors import ExecutorConfig
from etl.fetch.images import ImageConfig
from etl.fetch.stage import FetchConfig
from warehouse.contracts import MAX_PIXELS


def _tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += [p for p, parent in parents.items() if parent == pid]
    return total / 1024


def _run(paths: list[Path], root: Path, budget: int, workers: int, threads: int) -> dict:
    import os

    rows = [{"record_id": str(i), "media_url": p.as_uri(), "source": "gbif"} for i, p in enumerate(paths)]
    work = root / f"units-{budget}-{workers}"
    work.mkdir(exist_ok=True)
    units = slice_units(pa.Table.from_pylist(rows), work, 4)
    cfg = FetchConfig(
        image=ImageConfig(max_pixels_in_flight=budget),
        local_roots=(str(root),),
        threads=threads,
        max_bytes=1 << 30,
    )
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    ok = 0
    for _, table in (
        ExecutorConfig("local", workers).build().run_units(partial(fetch_slice, config=cfg), units)
    ):
        ok += table.column("ok")[0].as_py()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak[0]), "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--megapixels", type=float, default=81)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    side = int((args.megapixels * 1e6) ** 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        y, x = np.mgrid[0:side, 0:side]
        base = ((x + y) % 256).astype(np.uint8)
        pixels = np.stack([base, base[::-1], base.T], axis=-1)
        Image.fromarray(pixels).save(root / "0.png", compress_level=1)
        del pixels, base, x, y
        paths = [root / "0.png"]
        for i in range(1, args.images):  # copies: decoding cost is what matters, not their content
            (root / f"{i}.png").hardlink_to(root / "0.png")
            paths.append(root / f"{i}.png")
        # "off": the largest budget a config accepts (2^30 px, above 8 threads x 81 Mpx in flight)
        off = _run(paths, root, MAX_PIXELS, args.workers, args.threads)
        default = ImageConfig().max_pixels_in_flight
        on = _run(paths, root, default, args.workers, args.threads)
    emit(
        {
            "bench": "pixel_budget",
            "images": args.images,
            "megapixels": args.megapixels,
            "workers": args.workers,
            "threads": args.threads,
            "budget_off": off,
            f"budget_{default // 1_000_000}M": on,
        }
    )


if __name__ == "__main__":
    main()
