"""Dedup benchmarks, JSON lines on stdout.

1. `near_search`: exact near-duplicate search (etl/dedup/near_dup.py) over N synthetic 64-bit hashes with 1,000
   planted neighbours at 1..k bits; each size runs in its own process so peak RSS is per size; the growth
   exponent is log(t_10M / t_1M) / log(10).
2. `vs_imagededup`: rendered images with planted near duplicates (resize, JPEG re-encode, 2% crop, resize +
   re-encode) among look-alike distractors (same species, other individuals): pairwise precision and recall
   and seconds for our hashing + search next to imagededup's PHash `encode_images` + `find_duplicates`, on
   the same files in the same run, both with 2 workers.

3. `dedup_stage`: the whole `tol dedup` command (its own process, memory of its process tree sampled) on a
   home synthesised with N image rows (random 64-bit pHashes, 1% planted near duplicates at 1-3 bits, 0.5%
   exact MD5 copies; no image bytes, which dedup never reads), at each of `--stage-sizes`: seconds, peak RSS,
   the decisions found against the planted truth, and the log-log growth exponents.

Usage: bench_dedup.py [--sizes 1000000,10000000] [--images 1500] [--stage-sizes 1000000,10000000]
                      [--skip-synthetic] [--skip-images] [--skip-stage]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from _common import emit, peak_rss_mb

from etl.dedup.near_dup import near_pairs, plan_layout


def synthetic(n: int, k: int, planted: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    src = rng.choice(n, planted, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), planted, replace=False)
    flips = rng.integers(1, k + 1, planted)
    for s, d, f in zip(src, dst, flips, strict=True):
        v = hashes[s]
        for bit in rng.choice(64, f, replace=False):
            v ^= np.uint64(1) << np.uint64(bit)
        hashes[d] = v
    t0 = time.perf_counter()
    i, j, _ = near_pairs(hashes, k)
    seconds = time.perf_counter() - t0
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    want = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}
    layout = plan_layout(k, n)
    return {
        "n": n,
        "k": k,
        "layout": f"{layout.segments} segments, {layout.match} must match ({len(layout.subsets)} keys)",
        "seconds": round(seconds, 2),
        "pairs_found": len(found),
        "planted_recall": len(want & found) / len(want),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def bench_synthetic(sizes: list[int], k: int) -> dict:
    runs = []
    for n in sizes:  # one process per size: peak RSS then belongs to that size alone
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--k", str(k)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout))
    result = {"bench": "dedup_near_search", "k": k, "runs": runs}
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        result["growth_exponent"] = round(
            math.log(b["seconds"] / a["seconds"]) / math.log(b["n"] / a["n"]), 2
        )
    return result


# --- images vs imagededup ----------------------------------------------------------------------------------


def _variants(img, rng: random.Random) -> dict[str, bytes]:
    from sample_world.render import jpeg_bytes

    w, h = img.size
    dx, dy = max(1, round(w * 0.02)), max(1, round(h * 0.02))
    half = img.resize((w // 2, h // 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    return {
        "resize": jpeg_bytes(half),
        "reencode": buf.getvalue(),
        "crop2": jpeg_bytes(img.crop((dx, dy, w - dx, h - dy))),
        "resize_reencode": (lambda b: (half.save(b, "JPEG", quality=50), b.getvalue())[1])(io.BytesIO()),
    }


def make_images(folder: Path, n_base: int, n_dup_groups: int, seed: int = 0) -> list[set[str]]:
    """n_base renders (20 individuals per species: look-alike distractors); the first n_dup_groups get
    their four variants. Returns the duplicate groups (file names)."""
    from sample_world.render import jpeg_bytes, render_organism

    rng = random.Random(seed)
    groups = []
    for b in range(n_base):
        species = b // 20
        traits = {
            r: (species * p) % 7
            for r, p in zip(("kingdom", "phylum", "class", "order"), (1, 3, 5, 2), strict=True)
        }
        traits.update(family=species % 5, genus=species % 11, species=species)
        size = (rng.randint(300, 900), rng.randint(300, 900))
        img = render_organism(traits, rng, size)
        name = f"{b:05d}.jpg"
        (folder / name).write_bytes(jpeg_bytes(img))
        if b < n_dup_groups:
            group = {name}
            for kind, data in _variants(img, rng).items():
                (folder / f"{b:05d}_{kind}.jpg").write_bytes(data)
                group.add(f"{b:05d}_{kind}.jpg")
            groups.append(group)
    return groups


def _our_hash(path: str) -> int | None:
    from etl.fetch.images import ImageConfig, process_image

    return process_image(Path(path).read_bytes(), ImageConfig(min_side=1, encode=False)).phash  # as eval sets


def _score(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict:
    tp = len(found & truth)
    return {
        "pairs_found": len(found),
        "precision": round(tp / len(found), 4) if found else None,
        "recall": round(tp / len(truth), 4),
    }


def bench_images(n_base: int, n_dup_groups: int, ks: list[int]) -> dict:
    try:
        from imagededup.methods import PHash
    except ImportError as exc:  # a peer comparison without the peer is not a benchmark
        raise SystemExit(
            "imagededup is not installed: `pip install -e '.[bench]'` (or `make bench`)"
        ) from exc
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        groups = make_images(folder, n_base, n_dup_groups)
        truth = {tuple(sorted(p)) for g in groups for p in _pairs(sorted(g))}
        files = sorted(p.name for p in folder.iterdir())
        out: dict = {"bench": "dedup_vs_imagededup", "images": len(files), "true_pairs": len(truth)}

        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:
            hashes = list(pool.map(_our_hash, [str(folder / f) for f in files], chunksize=32))
        ours_hash_s = time.perf_counter() - t0
        arr = np.array([h if h is not None else 0 for h in hashes], dtype=np.int64)
        out["ours"] = {"hash_seconds": round(ours_hash_s, 2)}
        for k in ks:
            t0 = time.perf_counter()
            i, j, _ = near_pairs(arr, k)
            search_s = time.perf_counter() - t0
            found = {tuple(sorted((files[a], files[b]))) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
            out["ours"][f"k={k}"] = {**_score(found, truth), "search_seconds": round(search_s, 3)}

        phasher = PHash(verbose=False)
        t0 = time.perf_counter()
        encodings = phasher.encode_images(image_dir=str(folder), num_enc_workers=2)
        theirs_hash_s = time.perf_counter() - t0
        out["imagededup"] = {"hash_seconds": round(theirs_hash_s, 2)}
        for k in ks:
            t0 = time.perf_counter()
            dups = phasher.find_duplicates(
                encoding_map=encodings, max_distance_threshold=k, num_enc_workers=2, num_dist_workers=2
            )
            search_s = time.perf_counter() - t0
            found = {tuple(sorted((a, b))) for a, bs in dups.items() for b in bs}
            out["imagededup"][f"k={k}"] = {**_score(found, truth), "search_seconds": round(search_s, 3)}
        default = 6
        ours, theirs = out["ours"][f"k={default}"], out["imagededup"][f"k={default}"]
        out["at_k"] = default
        out["recall_ratio"] = round(ours["recall"] / theirs["recall"], 3) if theirs["recall"] else None
        out["total_seconds_ratio"] = round(
            (theirs_hash_s + theirs["search_seconds"]) / (ours_hash_s + ours["search_seconds"]), 2
        )
        return out


def _pairs(items: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for x, a in enumerate(items) for b in items[x + 1 :]]


# --- the dedup stage, end to end ------------------------------------------------------------------------


def synth_home(home: Path, n: int, seed: int = 0, part_rows: int = 1_000_000) -> dict:
    """A home whose lake holds `n` raw records and their image rows (no bytes), in parts of `part_rows`."""
    import datetime as dt

    import pyarrow as pa

    from warehouse.catalog import open_catalog
    from warehouse.schemas import IMAGES, RAW_RECORDS

    catalog = open_catalog(home)
    rng = np.random.default_rng(seed)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    planted = {"near_duplicate": 0, "exact_duplicate": 0}
    for start in range(0, n, part_rows):
        m = min(part_rows, n - start)
        ids = np.char.add("bench:", np.char.zfill(np.arange(start, start + m).astype(str), 10))
        h = rng.integers(0, 2**64, m, dtype=np.uint64)
        md5 = np.char.add(np.char.zfill(np.arange(start, start + m).astype(str), 16), "0" * 16)
        # 1% near copies of the row before (1-3 bits flipped), 0.5% exact copies (same MD5) of the row before.
        near = np.arange(1, m, 100)
        flips = np.zeros(near.size, dtype=np.uint64)
        for _ in range(3):
            flips |= np.uint64(1) << rng.integers(0, 64, near.size).astype(np.uint64)
        h[near] = h[near - 1] ^ flips
        exact = np.arange(51, m, 200)
        h[exact], md5[exact] = h[exact - 1], md5[exact - 1]
        planted["near_duplicate"] += int(near.size)
        planted["exact_duplicate"] += int(exact.size)
        cols = {
            "record_id": pa.array(ids),
            "source": pa.array(["bioscan"] * m),
            "run_id": pa.array(["synth"] * m),
        }
        raw = {f.name: cols.get(f.name, pa.nulls(m, f.type)) for f in RAW_RECORDS}
        raw["ingested_at"] = pa.array([now] * m, pa.timestamp("us", tz="UTC"))
        catalog.write_part("raw_records_history", pa.table(raw), partition={"source": "bioscan", "ingest": f"p{start}"},
                           part="records")  # fmt: skip
        img = {f.name: cols.get(f.name, pa.nulls(m, f.type)) for f in IMAGES}
        img |= {"status": pa.array(["ok"] * m), "md5": pa.array(md5), "phash": pa.array(h.view(np.int64)),
                "width": pa.array(np.full(m, 256, np.int32)), "height": pa.array(np.full(m, 256, np.int32)),
                "fetched_at": pa.array([now] * m, pa.timestamp("us", tz="UTC"))}  # fmt: skip
        catalog.write_part(
            "images_history", pa.table(img), partition={"source": "bioscan"}, part=f"p{start:010d}"
        )
    return planted


def bench_stage(sizes: list[int], work: Path) -> dict:
    from bench.bench_scale import run_stage

    runs = []
    for n in sizes:
        home = work / f"home-{n}"
        t0 = time.perf_counter()
        planted = synth_home(home, n)
        synth = time.perf_counter() - t0
        stage = run_stage(home, ["dedup"], work / f"log-{n}.txt")
        from warehouse.catalog import Catalog

        with Catalog(home).connect(read_only=True) as con:
            found = dict(
                con.execute(
                    "SELECT reason, count(*) FROM dedup_decisions WHERE NOT kept GROUP BY ALL"
                ).fetchall()
            )
            details = con.execute("SELECT details FROM stage_runs WHERE stage = 'dedup' ORDER BY ended_at DESC LIMIT 1").fetchone()[0]  # fmt: skip
        runs.append({"n": n, "synthesize_seconds": round(synth, 1), **stage, "planted": planted, "found": found,
                     "details": json.loads(details) if isinstance(details, str) else details})  # fmt: skip
        print(f"# dedup stage n={n}: {runs[-1]}", file=sys.stderr, flush=True)
        shutil.rmtree(home, ignore_errors=True)
    result = {"bench": "dedup_stage", "runs": runs}
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        scale = math.log(b["n"] / a["n"])
        result["growth_exponent"] = {key: round(math.log(b[key] / a[key]) / scale, 2)
                                     for key in ("seconds", "driver_rss_mb", "tree_rss_mb")}  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--images", type=int, default=1500, help="base renders for the imagededup comparison")
    ap.add_argument("--dup-groups", type=int, default=300)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-images", action="store_true")
    ap.add_argument("--stage-sizes", default="1000000,10000000")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--work", default=None, help="folder for the synthetic homes (default: a temporary one)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(synthetic(args.one, args.k)))
        return
    if not args.skip_synthetic:
        emit(bench_synthetic([int(s) for s in args.sizes.split(",")], args.k))
    if not args.skip_images:
        emit(bench_images(args.images, args.dup_groups, [4, 6, 8, 10]))
    if not args.skip_stage:
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            emit(bench_stage([int(s) for s in args.stage_sizes.split(",")], Path(work)))


if __name__ == "__main__":
    main()
