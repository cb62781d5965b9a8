"""Fetch: images/s for download + decode + resize + MD5 + pHash + write over loopback, local executor and
Spark local[2], next to img2dataset on the same URL list, same server, same 2 cores, in the same run.
Realistic JPEGs of 300-1600 px with texture (not flat colour).

img2dataset runs from its own venv (its dependencies, wandb and opencv among them, stay out of the project's):
`make peers` creates `.venv-peers`; pass another with `--img2dataset PATH`. It resizes the long side to 720
(`keep_ratio_largest`, only if bigger), re-encodes at quality 90, writes files, and computes no pHash.

Usage: bench_fetch.py [--images 1500] [--img2dataset .venv-peers/bin/img2dataset]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
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
from _common import emit, fetch_slice, slice_units
from PIL import Image

from etl.executors import ExecutorConfig
from etl.fetch.stage import FetchConfig


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


def run_img2dataset(binary: Path, urls: list[str], workdir: Path) -> dict:
    """img2dataset on the same URLs with 2 processes (the machine's cores); wall time includes its start-up."""
    url_list = workdir / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n", encoding="utf-8")
    out = workdir / "i2d_out"
    cmd = [
        str(binary), "--url_list", str(url_list), "--input_format", "txt", "--output_folder", str(out),
        "--output_format", "files", "--image_size", "720", "--resize_mode", "keep_ratio_largest",
        "--resize_only_if_bigger", "True", "--encode_quality", "90", "--processes_count", "2",
        "--thread_count", "16", "--number_sample_per_shard", "1000", "--enable_wandb", "False",
        "--retries", "0", "--timeout", "20",
    ]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed ({proc.returncode}): {proc.stderr[-2000:]}")
    ok = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"seconds": round(seconds, 2), "images_per_s": round(len(urls) / seconds, 1), "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--img2dataset", type=Path, default=Path(".venv-peers/bin/img2dataset"))
    args = ap.parse_args()
    n = args.images
    if not args.img2dataset.exists():  # a peer comparison without the peer is not a benchmark
        raise SystemExit(f"{args.img2dataset} not found: run `make peers` (or pass --img2dataset PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        make_corpus(folder, n)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = [f"{base}/{i:05d}.jpg" for i in range(n)]
        table = pa.table(
            {"record_id": [f"r{i}" for i in range(n)], "media_url": urls, "source": ["bench"] * n}
        )
        fn = partial(fetch_slice, config=FetchConfig(allow_private_hosts=True))
        result: dict = {
            "bench": "fetch",
            "images": n,
            "corpus_mb": round(sum(p.stat().st_size for p in folder.iterdir()) / 2**20, 1),
            "work": "download, decode, resize to 720, MD5, pHash, JPEG (kept as sent when already small)",
        }
        for name in ("local", "spark"):
            executor = ExecutorConfig(name, workers=2, spark_master="local[2]").build()
            out_dir = Path(tmp) / f"out_{name}"
            out_dir.mkdir()
            units = slice_units(table, tmp, 64, out=str(out_dir))  # workers write their parts, as the stage's
            if name == "spark":  # warm the session so its ~7 s start is not counted as fetch time
                list(executor.run_units(fn, [{**units[0], "n": 2, "out": None}]))
            t0 = time.perf_counter()
            ok = 0
            for _, t in executor.run_units(fn, units):
                ok += t.column("ok")[0].as_py()
            seconds = time.perf_counter() - t0
            result[name] = {"seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1), "ok": ok}
        result["img2dataset"] = run_img2dataset(args.img2dataset, urls, Path(tmp))
        peer = result["img2dataset"]["images_per_s"]
        result["ratio_local_vs_img2dataset"] = round(result["local"]["images_per_s"] / peer, 2)
        result["ratio_spark_vs_img2dataset"] = round(result["spark"]["images_per_s"] / peer, 2)
        server.shutdown()
        emit(result)


if __name__ == "__main__":
    main()
