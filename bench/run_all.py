"""Every benchmark in `bench/`, one after another, each in its own process: their JSON lines on stdout, and a
first line naming the commit and the machine the figures belong to (docs/benchmarks.md cites it).

`--quick` runs each at the small sizes of the table below (about 15 minutes on 2 cores), which is what the
closing notes and `make bench QUICK=1` show; without it every benchmark runs at its own defaults (the figures
in docs/benchmarks.md; over an hour here). A benchmark that fails prints a `failed` line with its stderr's
tail, and the run goes on; the exit status says whether any failed.

Usage: run_all.py [--quick] [--only NAME ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# The quick sizes: each large enough to exercise the code path it measures, small enough for a check.
QUICK: dict[str, list[str]] = {
    "bench_dedup": ["--sizes", "100000,1000000", "--stage-sizes", "100000,1000000", "--images", "300",
                    "--dup-groups", "60"],
    "bench_dedup_query": ["--hashes", "1000000", "--queries", "5"],
    "bench_emergent_scale": ["--scales", "13x100"],
    "bench_fetch": ["--images", "400"],
    "bench_filter": ["--images", "40", "--records", "200000", "--skip-vit-l"],
    "bench_gpu_train": [],
    "bench_ingest": ["--pages", "20", "--dwca-media", "100000"],
    "bench_pixel_budget": ["--images", "8", "--megapixels", "36"],
    "bench_replay_effect": [],
    "bench_scale": ["--sizes", "2000,10000"],
    "bench_shard_train_eval": [],
    "bench_taxonomy": ["--taxa", "200000", "--names", "200000"],
    "bench_trainer_vs_open_clip": [],
}  # fmt: skip


def _commit() -> dict[str, object]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "-uno")),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="the small sizes of QUICK instead of each one's defaults"
    )
    ap.add_argument("--only", action="append", help="run only this benchmark (repeatable), e.g. bench_fetch")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one benchmark may take")
    args = ap.parse_args()
    scripts = sorted(p.stem for p in BENCH.glob("bench_*.py"))
    unknown = set(args.only or ()) - set(scripts)
    if unknown:
        ap.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    missing = set(scripts) - set(QUICK)
    if missing:  # a new benchmark must say its quick sizes
        raise SystemExit(f"bench/run_all.py: QUICK has no entry for {', '.join(sorted(missing))}")
    head = {"bench": "run_all", "quick": args.quick, **_commit(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "started": time.strftime("%FT%TZ", time.gmtime())}  # fmt: skip
    print(json.dumps(head), flush=True)
    failed = 0
    for name in args.only or scripts:
        extra = QUICK[name] if args.quick else []
        if name == "bench_scale":  # its work folder, fresh per run
            extra = [*extra, "--work", tempfile.mkdtemp(prefix="tol-bench-scale-")]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, str(BENCH / f"{name}.py"), *extra],
                cwd=REPO, capture_output=True, text=True, timeout=args.timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            failed += 1
            print(json.dumps({"bench": name, "failed": f"timed out after {args.timeout:.0f} s"}), flush=True)
            continue
        sys.stdout.write(proc.stdout)
        seconds = round(time.perf_counter() - t0, 1)
        if proc.returncode:
            failed += 1
            print(
                json.dumps({"bench": name, "failed": proc.returncode, "stderr": proc.stderr[-1500:]}),
                flush=True,
            )
        print(json.dumps({"bench": name, "wall_s": seconds, "args": extra}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
