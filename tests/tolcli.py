"""Run `tol` as users do: each command its own process, on one home. Used by the stage, fault-injection and
concurrency tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from training.config import TINY_VIT_CFG
from warehouse.contracts import SOURCES

# The micro model of the training tests, as a config file a `tol train` process reads.
MICRO_MODEL = {
    **TINY_VIT_CFG,
    "vision_cfg": {**TINY_VIT_CFG["vision_cfg"], "layers": 1, "width": 64, "head_width": 32},
    "text_cfg": {**TINY_VIT_CFG["text_cfg"], "layers": 1, "width": 64, "heads": 2},
}


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update({"PYTHONUNBUFFERED": "1", "TOL_CATALOG_WAIT": "300", "OMP_NUM_THREADS": "1"})
    out.update(extra)
    return out


def argv(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "--home", str(home), *args]


def tol(home: Path, *args: str, check: bool = True, timeout: float = 600, **extra: str):
    """Run one command to the end; with `check`, a non-zero exit fails the test with its output."""
    proc = subprocess.run(
        argv(home, *args), capture_output=True, text=True, timeout=timeout, env=env(**extra)
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tol {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def sql(home: Path, query: str) -> list[dict]:
    return json.loads(tol(home, "sql", query, "--format", "json").stdout)


def start(home: Path, *args: str, **extra: str) -> subprocess.Popen:
    """Start a command in its own process group (so a test can clean up whatever it leaves)."""
    return subprocess.Popen(
        argv(home, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(**extra),
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def children(pid: int) -> list[int]:
    """Pids of the processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


@dataclass(frozen=True)
class Pipeline:
    """The commands of the curation pipeline on the sample world, in order, as (stage, args)."""

    base_url: str
    backbone: Path
    eval_dir: Path
    replay: Path
    config: Path  # the training config file

    def commands(self) -> list[tuple[str, list[str]]]:
        ingest = [
            (f"ingest-{s}", ["ingest", s, "--api-url", self.base_url, "--allow-private-hosts"])
            for s in SOURCES
        ]
        return [
            *ingest,
            ("load_backbone", ["taxonomy", "load-backbone", str(self.backbone)]),
            ("resolve", ["resolve"]),
            ("fetch", ["fetch", "--allow-private-hosts", "--workers", "2", "--partition-rows", "32"]),
            ("dedup", ["dedup", "--eval", f"heldout={self.eval_dir}"]),
            ("shard", ["shard", "--version", "v1", "--samples-per-shard", "32", "--val-fraction", "0.1"]),
            ("train", ["train", "--config", str(self.config)]),
        ]


def write_train_config(path: Path, replay: Path, steps: int = 12, checkpoint_every: int = 4) -> Path:
    config = {
        "dataset_version": "v1",
        "model_cfg": MICRO_MODEL,
        "batch_size": 8,
        "steps": steps,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": checkpoint_every,
        "replay_path": str(replay),
        "replay_batch_size": 4,
        "run_id": "fault-run",
        "threads": 1,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_pipeline(
    root: Path,
    world,
    base_url: str,
    *,
    train_steps: int = 12,
    checkpoint_every: int = 4,
    stop_before: str = "",
) -> tuple[Pipeline, dict[str, tuple[Path, Path, float, list[str]]]]:
    """Run the pipeline on `root/home`, each command its own process, copying the home before and after
    each stage: {stage: (home before, home after, seconds, args)}. `stop_before` ends it at that stage."""
    home = root / "home"
    home.mkdir()
    config = write_train_config(root / "train.json", world.replay_train, train_steps, checkpoint_every)
    pipeline = Pipeline(base_url, world.backbone, world.eval_dir, world.replay_train, config)
    snaps = {}
    for stage, args in pipeline.commands():
        if stage == stop_before:
            break
        before = root / f"before-{stage}"
        shutil.copytree(home, before, symlinks=True)
        t0 = time.monotonic()
        tol(home, *args)
        seconds = time.monotonic() - t0
        after = root / f"after-{stage}"
        shutil.copytree(home, after, symlinks=True)
        snaps[stage] = (before, after, seconds, args)
    return pipeline, snaps
