"""`tol demo`: build the sample world, serve it on loopback, and run every stage against it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from prefect import flow

import sample_world
from flows.pipeline import evaluate_flow, recipe_flow
from sample_world import SampleWorld, build_sample_world, serve_sample_world
from sample_world.build import SampleWorldConfig
from warehouse.catalog import open_catalog


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


SAMPLE_RECIPE = Path(sample_world.__file__).parent / "recipe.yaml"


def recipe_variables(world: SampleWorld, base_url: str) -> dict[str, str]:
    """The sample recipe's variables: where the world lies and where it is served."""
    return {"SAMPLE_WORLD": str(world.root.resolve()), "SAMPLE_WORLD_URL": base_url}


@flow(name="demo", log_prints=True)
def demo_flow(home: str = "tol-data", seed: int = 0, steps: int = 300) -> dict[str, Any]:
    """The sample world's recipe (`sample_world/recipe.yaml`), run end to end, then a random-init baseline."""
    open_catalog(home)
    t0 = time.perf_counter()
    world = prepare_world(home, seed)
    with serve_sample_world(world.root, port=_stable_port(world.root)) as server:
        out = recipe_flow(
            home,
            recipe_path=str(SAMPLE_RECIPE),
            variables=recipe_variables(world, server.base_url),
            train_overrides={"steps": steps},
        )
    trained = out["train"]
    baseline = evaluate_flow(home, model=str(_random_init_export(home)), compare_with=trained["run_id"])
    summary = {
        "recipe": str(SAMPLE_RECIPE),
        "recipe_sha256": out["recipe_sha256"],
        "curate": out["curate"],
        "training_run": trained["run_id"],
        "export_path": trained["export_path"],
        "evaluation": trained["evaluation"],
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
