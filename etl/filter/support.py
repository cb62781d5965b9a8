"""Support sets for the `museum_category` scorer: a folder per category of example images, embedded by an
open_clip model and summarised as k-means centroids per category (`tol filter build-support`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from evaluation.tasks import resolve_model
from warehouse.catalog import Catalog
from warehouse.contracts import check_name, is_image_name
from warehouse.lake import part_path
from warehouse.schemas import SUPPORT_CENTROIDS
from warehouse.stage_runs import StageRun

log = logging.getLogger("tol.filter")


@dataclass(frozen=True)
class Support:
    name: str
    categories: list[str]  # one per centroid row
    centroids: np.ndarray  # (rows, dim) float32
    model_path: str  # what open_clip loads
    version: str  # the scorer's model_version: model, support and the run that built it


def support_images(folder: Path) -> dict[str, list[Path]]:
    """{category: image files}: each sub-folder of `folder` is a category (its name), searched recursively."""
    if not folder.is_dir():
        raise FileNotFoundError(f"support folder {folder} does not exist")
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in sub.rglob("*") if f.is_file() and is_image_name(f.name))
        if files:
            out[sub.name] = files
    if len(out) < 2:
        raise ValueError(
            f"support folder {folder} needs at least two category sub-folders with images "
            f"(found {', '.join(out) or 'none'}): nearest-centroid needs something to choose between"
        )
    return out


def kmeans_centroids(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centroids of L2-normalised rows (fewer when there are fewer images), renormalised."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(feats)))
    if k == 1:
        c = feats.mean(axis=0, keepdims=True)
    else:
        c = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(feats).cluster_centers_
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def build_support(
    catalog: Catalog,
    folder: str | Path,
    *,
    name: str,
    model: str,
    k: int = 8,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Embed every support image with `model` (resolved like an evaluation model), store k centroids per
    category as the lake part `filter_support/support=NAME`; returns counts per category."""
    from etl.filter.scorers import embed
    from evaluation.zero_shot import load_model

    check_name("support set", name)
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    images = support_images(Path(folder))
    model_path, _ = resolve_model(catalog, model)
    with StageRun(
        catalog,
        "filter_support",
        config={"folder": str(folder), "name": name, "model": model, "k": k},
        lock=f"filter-support-{name}",
    ) as run:
        loaded = load_model(model_path)
        rows: dict[str, list] = {f.name: [] for f in SUPPORT_CENTROIDS}
        counts = {}
        for category, files in images.items():
            feats = np.concatenate(
                [
                    embed(loaded, [Image.open(f).convert("RGB") for f in files[i : i + batch_size]])
                    for i in range(0, len(files), batch_size)
                ]
            )
            cents = kmeans_centroids(feats, k, seed)
            counts[category] = len(files)
            for c in cents:
                for key, value in (
                    ("support", name),
                    ("category", category),
                    ("centroid", c.tolist()),
                    ("images", len(files)),
                    ("model", model_path),
                    ("model_version", model),
                    ("run_id", run.run_id),
                ):
                    rows[key].append(value)
        catalog.write_part(
            "filter_support",
            pa.Table.from_pydict(rows, schema=SUPPORT_CENTROIDS),
            partition={"support": name},
            part="centroids",
        )
        run.n_in, run.n_out = sum(counts.values()), len(rows["category"])
        run.details = {"support": name, "images": counts, "centroids": len(rows["category"])}
        log.info("support %s: %d centroids over %s", name, run.n_out, counts)
    return run.summary()


def load_support(home: str | Path, name: str) -> Support:
    path = part_path(
        Path(home) / "lake", "filter_support", {"support": check_name("support set", name)}, "centroids"
    )
    if not path.exists():
        raise LookupError(
            f"no support set {name!r}: run `tol filter build-support FOLDER --name {name} --model MODEL` first"
        )
    t = pq.read_table(path)
    centroids = np.asarray(t["centroid"].to_pylist(), np.float32)
    model_path = t["model"][0].as_py()
    version = f"{t['model_version'][0].as_py()} support={name}@{t['run_id'][0].as_py()}"
    return Support(name, t["category"].to_pylist(), centroids, model_path, version)
