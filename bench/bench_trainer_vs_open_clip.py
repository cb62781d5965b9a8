"""Training throughput: our loop vs open_clip's own trainer (`open_clip_train.main`), same tiny model config,
same shards, same batch size and caption (`txt` = taxon_com), replay off, fp32 on CPU, in one run."""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import demo_version_missing, emit

from training.config import TINY_VIT_CFG, load_config
from training.loop import train
from warehouse.catalog import open_catalog
from warehouse.versions import shard_urls

STEPS, BATCH = 60, 32


def run_open_clip(urls: list[str], tmp: Path) -> dict:
    import logging

    import open_clip
    from open_clip_train.main import main as oc_main

    cfg_dir = tmp / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tol-tiny-vit.json").write_text(json.dumps(TINY_VIT_CFG))
    open_clip.add_model_config(cfg_dir)
    first, last = (u.rsplit("-", 1)[1][:5] for u in (urls[0], urls[-1]))
    data = urls[0].rsplit("-", 1)[0] + f"-{{{first}..{last}}}.tar"
    args = [
        "--train-data",
        data,
        "--dataset-type",
        "webdataset",
        "--dataset-resampled",
        "--train-num-samples",
        str(STEPS * BATCH),
        "--batch-size",
        str(BATCH),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--model",
        "tol-tiny-vit",
        "--lr",
        "1e-3",
        "--warmup",
        "30",
        "--wd",
        "0.2",
        "--precision",
        "fp32",
        "--logs",
        str(tmp / "logs"),
        "--name",
        "bench",
        "--save-frequency",
        "0",
        "--log-every-n-steps",
        "10",
        "--report-to",
        "",
        "--seed",
        "42",
    ]
    buf = StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger().addHandler(handler)
    t0 = time.perf_counter()
    with redirect_stdout(buf), redirect_stderr(buf):
        oc_main(args)
    seconds = time.perf_counter() - t0
    logging.getLogger().removeHandler(handler)
    text = buf.getvalue() + "".join(p.read_text() for p in (tmp / "logs").rglob("out.log"))
    rates = [float(x) for x in re.findall(r"([\d.]+)/s/gpu", text)]
    return {
        "samples_per_s_logged": rates[-1] if rates else None,
        "wall_seconds": round(seconds, 1),
        "wall_samples_per_s": round(STEPS * BATCH / seconds, 1),
    }


def main(home: str = "tol-data") -> None:
    if demo_version_missing(home, Path(__file__).stem):
        return
    catalog = open_catalog(home)
    urls = shard_urls(catalog, "sample-v1", "train")
    with tempfile.TemporaryDirectory() as tmp:
        oc = run_open_clip(urls, Path(tmp))
    cfg = load_config(
        preset="cpu-tiny",
        overrides={
            "dataset_version": "sample-v1",
            "steps": STEPS,
            "batch_size": BATCH,
            "replay_batch_size": 0,
            "text_type": "taxon_com",
            "log_every": 10,
            "warmup_steps": 30,
        },
    )
    t0 = time.perf_counter()
    ours = train(catalog, cfg, progress=False)
    seconds = time.perf_counter() - t0
    mine = {
        "samples_per_s_logged": round(ours["final"]["samples_per_s"], 1),
        "wall_seconds": round(seconds, 1),
        "wall_samples_per_s": round(STEPS * BATCH / seconds, 1),
    }
    emit(
        {
            "bench": "trainer_vs_open_clip_train",
            "steps": STEPS,
            "batch_size": BATCH,
            "ours": mine,
            "open_clip_train": oc,
            "ratio_logged": round(mine["samples_per_s_logged"] / oc["samples_per_s_logged"], 3)
            if oc["samples_per_s_logged"]
            else None,
            "ratio_wall": round(mine["wall_samples_per_s"] / oc["wall_samples_per_s"], 3),
        }
    )


if __name__ == "__main__":
    main(*sys.argv[1:2])
