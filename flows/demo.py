"""`tol demo`: build the sample world, serve it on loopback, and run every stage against it."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow

import sample_world
from etl.filter.rules import FilterRule
from etl.filter.scorers import MuseumConfig
from etl.filter.stage import FilterConfig
from etl.filter.support import build_support
from etl.shards.stage import ShardConfig
from flows import stages
from flows.pipeline import evaluate_flow, recipe_flow
from sample_world import SampleWorld, build_sample_world, serve_sample_world
from sample_world.build import SampleWorldConfig
from training.config import load_config
from warehouse.catalog import open_catalog
from warehouse.versions import load_manifest


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
    museum = museum_filter_flow(
        home, str(world.support), trained["run_id"], out["curate"]["shard"]["version"]
    )
    baseline = evaluate_flow(home, model=str(_random_init_export(home)), compare_with=trained["run_id"])
    summary = {
        "recipe": str(SAMPLE_RECIPE),
        "recipe_sha256": out["recipe_sha256"],
        "curate": out["curate"],
        "museum_filter": museum,
        "training_run": trained["run_id"],
        "export_path": trained["export_path"],
        "evaluation": trained["evaluation"],
        "random_init_evaluation": baseline,
        "seconds": time.perf_counter() - t0,
    }
    (Path(home) / "demo_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


@flow(name="museum-filter", log_prints=True)
def museum_filter_flow(home: str, support_folder: str, model: str, version: str) -> dict[str, Any]:
    """The museum_category scorer with a model of this home: its support set's centroids, the scores, and
    `<version>-museum`, the version again with label and drawer pictures left out as well."""
    from flows.pipeline import stage_logs_to_prefect

    catalog = open_catalog(home)
    with stage_logs_to_prefect():
        support = build_support(catalog, support_folder, name="museum", model=model)
        base = ShardConfig(**load_manifest(catalog, version)["config"])
        # One run covering every rule's scorer: the version names it. Faces scored before are not scored
        # again (same model version), so this costs the museum images' embeddings.
        scorers = (*(r.scorer for r in base.filters), "museum_category")
        scores = stages.filter_images(catalog, FilterConfig(scorers=scorers, museum=MuseumConfig(model)))
        rules = (*base.filters, FilterRule("museum_category", drop_labels=("label", "drawer")))
        cfg = replace(base, version=f"{version}-museum", filters=rules, overwrite=True)
        manifest = stages.shard(catalog, cfg)
    return {
        "support": support["details"],
        "filter": scores["details"],
        "shard": stages.manifest_summary(manifest),
    }


def _random_init_export(home: str) -> Path:
    from training.model import export_untrained

    out = Path(home) / "runs" / "random-init" / "export"
    if not (out / "open_clip_config.json").exists():
        export_untrained(load_config(preset="cpu-tiny", overrides={"replay_batch_size": 0}), out)
    return out
