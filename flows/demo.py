"""`tol demo`: build the sample world, serve it on loopback, and run every stage against it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from prefect import flow

from etl.dedup.stage import DedupConfig
from etl.fetch.stage import FetchConfig
from etl.shards.stage import ShardConfig
from flows.pipeline import curate_flow, evaluate_flow, ingest_flow, train_flow
from sample_world import SampleWorld, build_sample_world, serve_sample_world
from sample_world.build import SampleWorldConfig
from warehouse.catalog import open_catalog
from warehouse.contracts import SOURCES

DEMO_VERSION = "sample-v1"


def _stable_port(world_root: Path) -> int:
    """Record ids include media URLs, so a re-run must serve on the same port as before."""
    port_file = world_root / "server_port"
    if port_file.exists():
        return int(port_file.read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    port_file.write_text(str(port))
    return port


def prepare_world(home: str, seed: int) -> SampleWorld:
    root = Path(home) / "sample_world"
    if (root / "world.json").exists():
        world = SampleWorld.load(root)
        if world.config.seed == seed:
            return world
    return build_sample_world(root, SampleWorldConfig(seed=seed))


@flow(name="demo", log_prints=True)
def demo_flow(
    home: str = "tol-data", seed: int = 0, steps: int = 300, replay_batch_size: int = 8
) -> dict[str, Any]:
    open_catalog(home)
    t0 = time.perf_counter()
    world = prepare_world(home, seed)
    with serve_sample_world(world.root, port=_stable_port(world.root)) as server:
        urls = dict.fromkeys(SOURCES, server.base_url)
        ingest_flow(home, api_urls=urls)
        curate = curate_flow(
            home,
            backbone_path=str(world.backbone),
            fetch=FetchConfig(allow_private_hosts=True),  # the sample world is served on loopback
            dedup=DedupConfig(eval_sets={"heldout": str(world.eval_dir)}),
            shard=ShardConfig(DEMO_VERSION, samples_per_shard=256, overwrite=True),
        )
    trained = train_flow(
        home,
        dataset_version=DEMO_VERSION,
        replay_path=str(world.replay_train),
        replay_batch_size=replay_batch_size,
        steps=steps,
    )
    scores = evaluate_flow(home, model=trained["run_id"])
    baseline = evaluate_flow(home, model=str(_random_init_export(home)))
    summary = {
        "curate": curate,
        "training_run": trained["run_id"],
        "export_path": trained["export_path"],
        "evaluation": scores,
        "random_init_evaluation": baseline,
        "seconds": time.perf_counter() - t0,
    }
    (Path(home) / "demo_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _random_init_export(home: str) -> Path:
    from training.config import load_config
    from training.model import export_untrained

    out = Path(home) / "runs" / "random-init" / "export"
    if not (out / "open_clip_config.json").exists():
        export_untrained(load_config(preset="cpu-tiny", overrides={"replay_batch_size": 0}), out)
    return out
