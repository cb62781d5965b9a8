"""Fetch: images/s for download + decode + resize + MD5 + pHash over loopback, local executor and Spark
local[2] on the same URLs. Realistic JPEGs of 300-1600 px with texture (not flat colour)."""

from __future__ import annotations

import io
import random
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
from _common import emit
from PIL import Image

from etl.executors import get_executor
from etl.fetch import FETCH_OUTPUT, FetchConfig, fetch_partition


def make_corpus(folder: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for i in range(n):
        w, h = rng.randint(300, 1600), rng.randint(300, 1200)
        small = nrng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(n: int = 600) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_corpus(folder, n)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        table = pa.table(
            {
                "record_id": [f"r{i}" for i in range(n)],
                "media_url": [f"{base}/{i:05d}.jpg" for i in range(n)],
                "source": ["bench"] * n,
            }
        )
        parts = [table.slice(o, 64) for o in range(0, n, 64)]
        fn = partial(fetch_partition, config=FetchConfig(allow_private_hosts=True))
        result: dict = {
            "bench": "fetch",
            "images": n,
            "corpus_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1),
        }
        for name in ("local", "spark"):
            executor = get_executor(name, workers=2, spark_master="local[2]")
            if name == "spark":  # warm the session so its ~7 s start is not counted as fetch time
                list(executor.map_partitions(fn, [table.slice(0, 2)], FETCH_OUTPUT))
            t0 = time.perf_counter()
            ok = sum(
                sum(1 for s in t.column("status").to_pylist() if s == "ok")
                for _, t in executor.map_partitions(fn, parts, FETCH_OUTPUT)
            )
            seconds = time.perf_counter() - t0
            result[name] = {"seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1), "ok": ok}
        result["peer"] = "img2dataset not measured in this run (not installed in the project venv)"
        server.shutdown()
        emit(result)


if __name__ == "__main__":
    main()
