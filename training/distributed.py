"""Data-parallel training through `torchrun`: process-group setup, rank-0-only side effects, and a launcher.

Each rank reads its own slice of one global sample stream (rank r takes samples r, r + W, ...), so W ranks with
per-device batch B see exactly the samples one process with batch W * B would, with the same seeded
augmentations; features are gathered across ranks with gradients (open_clip's local loss), and DDP averages
the gradients, which makes a step equal to the single-process step on the global batch (a test checks).
Only rank 0 touches the catalog (DuckDB has one writer) and writes checkpoints, metrics and the export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from training.config import TrainConfig
from warehouse.catalog import Catalog


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        torch_dist.init_process_group(backend=backend)
    return info


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value of `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch_dist.all_reduce(t)
    return float(t.item()) / info.world


def launch(home: str | Path, config: dict[str, Any], devices: int, timeout: float | None = None) -> dict:
    """Run one training run on `devices` processes with torchrun (one node) and return rank 0's summary."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "summary.json"
        cfg_path.write_text(json.dumps(config), encoding="utf-8")
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
            "-m", "training.distributed", "--home", str(home), "--config", str(cfg_path), "--out", str(out_path),
        ]  # fmt: skip
        proc = subprocess.run(cmd, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {devices} processes failed with exit code {proc.returncode}")
        return json.loads(out_path.read_text(encoding="utf-8"))


def main() -> None:
    """Entry point of each torchrun process."""
    from training.loop import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = TrainConfig(**json.loads(Path(args.config).read_text(encoding="utf-8")))
    info = init_distributed()
    try:
        # Opening the catalog object touches no file; only rank 0 connects (inside `train`).
        summary = train(Catalog(Path(args.home)), cfg, progress=info.main)
        if info.main:
            Path(args.out).write_text(json.dumps(summary, default=str), encoding="utf-8")
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
