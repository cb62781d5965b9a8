"""Corpus scale: ingest -> resolve -> fetch -> dedup -> shard -> verify at growing N, each stage its own `tol`
process as users run them, on synthetic BIOSCAN-5M-style records whose images are real, distinct JPEGs
(rendered organisms, each with its own lighting) read through `file://` under an allowed root.

Prints one JSON line per size (per stage: seconds, the driver's peak RSS, the peak RSS of its whole process
tree) and a final line with the log-log growth exponent of each figure between the smallest and largest
size. The images are rendered once per size under `--work` and reused by later runs.

    python bench/bench_scale.py --sizes 10000,100000 --work /tmp/scale [--executor spark]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit

SPECIES_CLASS = "Insecta"
RENDER_CHUNK = 2000


def _render_chunk(args: tuple[str, int, int]) -> int:
    """Render records [start, stop) of the world (deterministic per index) that do not exist yet."""
    from sample_world.render import jpeg_bytes, render_organism
    from sample_world.tree import build_tree

    root, start, stop = args
    species = [s for s in build_tree(0).species if s.lineage["class"] == SPECIES_CLASS]
    for i in range(start, stop):
        path = Path(root) / _image_rel(i)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(i)
        data = jpeg_bytes(render_organism(species[i % len(species)].traits, rng, (341, 256)))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two renders of one world may overlap
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return stop - start


def _pid(i: int) -> str:
    return f"BSCALE{i:08d}"


def _image_rel(i: int) -> str:
    return f"pretrain/{hashlib.md5(_pid(i).encode()).hexdigest()[:2]}/{_pid(i)}.jpg"


def synthesize(root: Path, n: int, workers: int) -> Path:
    """The metadata CSV of `n` records (images beside it, `<split>/<chunk>/<processid>.jpg`) and a backbone."""
    from sample_world.tree import build_tree

    root.mkdir(parents=True, exist_ok=True)
    species = [s for s in build_tree(0).species if s.lineage["class"] == SPECIES_CLASS]
    meta = root / f"metadata-{n}.csv"
    if not meta.exists():
        tmp = meta.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["processid", "sampleid", "phylum", "class", "order", "family", "genus", "species",
                        "split", "chunk"])  # fmt: skip
            for i in range(n):
                sp = species[i % len(species)]
                lin = sp.lineage
                chunk = _image_rel(i).split("/")[1]
                w.writerow([_pid(i), f"S{i:08d}", "Arthropoda", "Insecta", lin["order"], lin["family"],
                            lin["genus"], sp.binomial, "pretrain", chunk])  # fmt: skip
        os.replace(tmp, meta)
    chunks = [(str(root), a, min(n, a + RENDER_CHUNK)) for a in range(0, n, RENDER_CHUNK)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_render_chunk, chunks):
            pass
    return meta


def _tree_rss(root_pid: int) -> tuple[int, int]:
    """(RSS of `root_pid`, RSS of it and all its descendants), in bytes, read from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * page
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return rss.get(root_pid, 0), sum(rss.get(p, 0) for p in tree)


def _peak_rss(pid: int) -> int:
    """The kernel's high-water mark of `pid`'s RSS (VmHWM), in bytes: the exact peak, which sampling misses."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tol(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "--home", str(home), "--log-level", "WARNING", *args]


class SqlProbe:
    """`tol sql` about once a second while a stage runs (as a user watching it would): counts, failures and
    the slowest answer. Off by default: each query is a process, which costs the stage CPU."""

    def __init__(self, home: Path) -> None:
        self.home, self.queries, self.failures, self.slowest = home, 0, 0, 0.0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not (self.home / "catalog.duckdb").exists():  # the first ingest has not made it yet
                self._stop.wait(0.2)
                continue
            t0 = time.perf_counter()
            q = subprocess.run(_tol(self.home, "sql", "SELECT stage, status, n_out FROM stage_runs"),
                               capture_output=True, env={**os.environ, "TOL_CATALOG_WAIT": "600"})  # fmt: skip
            self.queries += 1
            if q.returncode != 0:
                self.failures += 1
                self.errors.append(q.stderr.decode(errors="replace").strip()[-500:])
            self.slowest = max(self.slowest, time.perf_counter() - t0)
            self._stop.wait(max(0.0, 1.0 - (time.perf_counter() - t0)))

    def __enter__(self) -> SqlProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        return {"queries": self.queries, "failures": self.failures, "slowest_s": round(self.slowest, 2),
                "errors": self.errors[:3]}  # fmt: skip


def run_stage(home: Path, args: list[str], log: Path, probe: bool = False) -> dict:
    """Run one `tol` command, sampling its memory; fail loudly (with its log) if it fails."""
    env = {**os.environ, "TOL_CATALOG_WAIT": "600"}
    t0 = time.perf_counter()
    with open(log, "ab") as out, SqlProbe(home) if probe else contextlib.nullcontext() as sql_probe:
        proc = subprocess.Popen(_tol(home, *args), stdout=out, stderr=subprocess.STDOUT, env=env)
        driver = tree = 0
        while proc.poll() is None:  # the driver's peak from the kernel; the tree's (summed) sampled
            d, t = _tree_rss(proc.pid)
            driver, tree = max(driver, d, _peak_rss(proc.pid)), max(tree, t)
            time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tol {' '.join(args)} exited {proc.returncode}; see {log}")
    result = {
        "seconds": round(seconds, 2),
        "driver_rss_mb": round(driver / 2**20),
        "tree_rss_mb": round(tree / 2**20),
    }
    if sql_probe is not None:
        result["sql_probe"] = sql_probe.result()
    return result


def run_size(
    n: int, work: Path, executor: list[str], samples_per_shard: int, keep: bool, probe: bool
) -> dict:
    from sample_world.build import SampleWorldConfig, build_sample_world

    images = work / "images"
    t0 = time.perf_counter()
    meta = synthesize(images, n, workers=2)
    synth_seconds = time.perf_counter() - t0
    world = work / "backbone-world"  # a small sample world, for its backbone (the same tree of species)
    if not (world / "backbone" / "Taxon.tsv").exists():
        small = SampleWorldConfig(gbif_occurrences_per_species=1, eol_media_per_species=1, eval_images_per_species=1,
                                  bioscan_rows_per_species=1, fathomnet_frames_per_species=1, replay_train=8,
                                  replay_heldout=8, leaks=1)  # fmt: skip
        build_sample_world(world, small)
    home = work / f"home-{n}"
    if home.exists():
        shutil.rmtree(home)
    log = work / f"log-{n}.txt"
    stages = {
        "ingest": ["ingest", "bioscan", "--path", str(meta), "--param", f"image_root={images.as_uri()}"],
        "backbone": ["taxonomy", "load-backbone", str(world / "backbone")],
        "resolve": ["resolve"],
        "fetch": ["fetch", "--allow-local-root", str(images), *executor],
        "dedup": ["dedup"],
        "shard": ["shard", "--version", "scale", "--samples-per-shard", str(samples_per_shard), *executor],
        "verify": ["versions", "verify", "scale", *executor],
    }
    from etl.ingest.records import record_id

    looked_up = record_id("bioscan", _pid(n // 2), 0).replace("'", "''")
    stages |= {  # what every later command pays: opening the catalog, and one record's lineage
        "open_catalog": ["sql", "SELECT 1"],
        "lineage_lookup": ["sql", f"SELECT * FROM record_lineage WHERE record_id = '{looked_up}'"],
        "resolve_again": ["resolve"],  # incremental: nothing changed, every answer carried
        "dedup_again": ["dedup"],  # the same: every decision computed again, none written
    }
    out = {"bench": "scale", "n": n, "synthesize_seconds": round(synth_seconds, 1), "stages": {}}
    long_read = None
    for name, args in stages.items():
        if probe and name == "resolve":  # a read of about a minute, started just before a stage
            long_read = subprocess.Popen(_tol(home, "sql", "SELECT sum(hash(i)) FROM range(20000000000) t(i)"),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            time.sleep(2)
        out["stages"][name] = run_stage(home, args, log, probe=probe)
        if long_read is not None:
            t_wait = time.perf_counter()
            long_read.wait()
            out["long_read"] = {"returncode": long_read.returncode, "outlived_the_stage_by_s":
                                round(time.perf_counter() - t_wait, 1)}  # fmt: skip
            long_read = None
        print(f"# n={n} {name}: {out['stages'][name]}", file=sys.stderr, flush=True)
    counts = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--home", str(home), "sql", "--format", "json",
         "SELECT stage, n_in, n_out FROM stage_runs WHERE status = 'succeeded' ORDER BY started_at"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out["counts"] = {r["stage"]: [r["n_in"], r["n_out"]] for r in json.loads(counts)}
    listed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--home", str(home), "sql", "--format", "json",
         "SELECT state, count(*) AS n FROM lake_compacted_parts GROUP BY state"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out["image_parts"] = {  # what a query over `images` opens, after fetch's compaction
        "files": sum(1 for _ in (home / "lake" / "images").rglob("*.parquet")),
        **{r["state"]: r["n"] for r in json.loads(listed)},
    }
    out["home_bytes"] = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    if not keep:
        shutil.rmtree(home)
    return out


def exponents(results: list[dict]) -> dict:
    """d log(figure) / d log(n) between the smallest and the largest size, per stage and figure."""
    a, b = results[0], results[-1]
    span = math.log(b["n"] / a["n"])
    out = {}
    for stage in a["stages"]:
        out[stage] = {
            key: round(
                math.log(max(b["stages"][stage][key], 1e-3) / max(a["stages"][stage][key], 1e-3)) / span, 3
            )
            for key in ("seconds", "driver_rss_mb", "tree_rss_mb")
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--work", default="/tmp/tol-bench-scale")
    ap.add_argument("--executor", choices=["local", "spark"], default="local")
    ap.add_argument("--spark-master", default="local[2]")
    ap.add_argument("--standalone", type=int, metavar="WORKERS",
                    help="with --executor spark: start a standalone cluster of this many one-core workers on loopback")  # fmt: skip
    ap.add_argument("--samples-per-shard", type=int, default=5000)
    ap.add_argument("--keep", action="store_true", help="keep each size's home")
    ap.add_argument("--probe-sql", action="store_true", help="tol sql every second during each stage, and a "
                    "one-minute read started before resolve (their own figures; they slow the stages)")  # fmt: skip
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        master = args.spark_master
        if args.executor == "spark" and args.standalone:
            from tests.spark_cluster import standalone_cluster

            master = stack.enter_context(standalone_cluster(work / "spark-cluster", workers=args.standalone))
        executor = ["--executor", "spark", "--spark-master", master] if args.executor == "spark" else []
        results = []
        for n in sorted(int(s) for s in args.sizes.split(",")):
            results.append(run_size(n, work, executor, args.samples_per_shard, args.keep, args.probe_sql))
            results[-1]["executor"] = "spark " + master if executor else "local"
            emit(results[-1])
    if len(results) > 1:
        emit({"bench": "scale", "executor": args.executor, "exponents": exponents(results),
              "sizes": [r["n"] for r in results]})  # fmt: skip


if __name__ == "__main__":
    main()
