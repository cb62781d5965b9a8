"""Shard write/read throughput, training samples/s (with and without replay) and evaluation feature
extraction images/s, on the sample world built and curated in a temporary home."""

from __future__ import annotations

import glob
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset as wds
from _common import emit, peak_rss_mb


def main() -> None:
    from etl.dedup.stage import DedupConfig
    from etl.fetch.stage import FetchConfig
    from etl.ingest.sources import IngestConfig
    from etl.shards.stage import ShardConfig
    from evaluation.datasets import load_metadata_folder
    from evaluation.zero_shot import image_features, load_model
    from flows import stages
    from sample_world import build_sample_world, serve_sample_world
    from training.config import load_config
    from warehouse.catalog import open_catalog
    from warehouse.contracts import SOURCES

    result: dict = {"bench": "shard_train_evaluate"}
    with tempfile.TemporaryDirectory() as tmp:
        world = build_sample_world(Path(tmp) / "world")
        cat = open_catalog(Path(tmp) / "home")
        with serve_sample_world(world.root) as srv:
            for s in SOURCES:
                stages.ingest(cat, IngestConfig(s, api_url=srv.base_url, allow_private_hosts=True))
            stages.load_backbone(cat, world.backbone)
            stages.resolve(cat)
            stages.fetch(cat, FetchConfig(allow_private_hosts=True))
        stages.dedup(cat, DedupConfig(eval_sets={"heldout": str(world.eval_dir)}))
        t0 = time.perf_counter()
        manifest = stages.shard(cat, ShardConfig("b1", samples_per_shard=256))
        write_s = time.perf_counter() - t0
        mb = sum(s["bytes"] for s in manifest["shards"]) / 2**20
        urls = sorted(glob.glob(str(cat.shards / "b1" / "*" / "*.tar")))
        t0 = time.perf_counter()
        n = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        read_s = time.perf_counter() - t0
        result["shard"] = {
            "samples": manifest["n_samples"],
            "mb": round(mb, 1),
            "write_samples_per_s": round(manifest["n_samples"] / write_s),
            "write_mb_per_s": round(mb / write_s, 1),
            "read_decode_samples_per_s": round(n / read_s),
        }
        for replay in (0, 8):
            cfg = load_config(
                preset="cpu-tiny",
                overrides={
                    "dataset_version": "b1",
                    "steps": 40,
                    "log_every": 40,
                    "replay_batch_size": replay,
                    "replay_path": str(world.replay_train) if replay else None,
                    "run_id": f"bench-{replay}",
                },
            )
            out = stages.train(cat, cfg, progress=False)
            result[f"train_replay_{replay}"] = {
                "bio_samples_per_s": round(out["final"]["samples_per_s"], 1),
                "seconds": round(out["seconds"], 1),
            }
        result["replay_overhead"] = round(
            result["train_replay_0"]["bio_samples_per_s"] / result["train_replay_8"]["bio_samples_per_s"], 2
        )
        model = load_model(str(cat.runs / "bench-0" / "export"))
        data = load_metadata_folder(world.eval_dir)
        t0 = time.perf_counter()
        image_features(model, data.paths, progress=False)
        result["evaluate"] = {
            "images": len(data.paths),
            "features_images_per_s": round(len(data.paths) / (time.perf_counter() - t0), 1),
        }
        result["peer"] = "open_clip_train and CLIP_benchmark not measured in this run (not installed)"
        result["peak_rss_mb"] = round(peak_rss_mb())
    emit(result)


if __name__ == "__main__":
    main()
