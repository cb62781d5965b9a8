"""Filter scorer benchmarks, JSON lines on stdout: images (or records) per second on this machine's CPU.

1. `faces`: facenet-pytorch MTCNN (shipped weights, the paper's thresholds) at 224 px on rendered sample
   images plus two real photographs of people, at 1 and 2 torch threads.
2. `museum_category`: open_clip image embeddings + nearest centroid at 224 px, batch 32, for the tiny preset
   model and a config-built ViT-B-32 (random weights: the cost of the architecture, not its accuracy; the
   paper's ViT-L/14@336px is measured on 16 images), at 1 and 2 threads.
3. `image_type_burst_sql`: the image_type rules and the burst window over N synthetic GBIF-like records, in
   DuckDB (no image is read).

Usage: bench_filter.py [--images 200] [--records 2000000] [--skip-vit-l]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from _common import emit, peak_rss_mb
from PIL import Image


def images(n: int) -> list[Image.Image]:
    import skimage.data

    from sample_world.render import render_organism

    rng = random.Random(0)
    out = [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.camera()).convert("RGB")]
    while len(out) < n:
        traits = {
            k: rng.randrange(12)
            for k in ("kingdom", "phylum", "class", "order", "family", "genus", "species")
        }
        out.append(render_organism(traits, rng, (rng.randint(300, 520), rng.randint(260, 420))))
    return out


def bench_faces(imgs: list[Image.Image]) -> None:
    from etl.filter.scorers import FaceConfig, FaceScorer

    scorer = FaceScorer(FaceConfig())
    scorer.score_batch(imgs[:2])  # warm-up
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        res = scorer.score_batch(imgs)
        dt = time.perf_counter() - t0
        emit(
            {
                "bench": "faces",
                "model": "mtcnn",
                "size": 224,
                "threads": threads,
                "images": len(imgs),
                "batch": 1,
                "faces_found": sum(r.label == "face" for r in res),
                "images_per_s": round(len(imgs) / dt, 1),
                "seconds": round(dt, 2),
                "peak_rss_mb": round(peak_rss_mb()),
            }
        )


def bench_museum(imgs: list[Image.Image], skip_vit_l: bool) -> None:
    import open_clip

    from etl.filter.scorers import MuseumCategoryScorer
    from evaluation.zero_shot import LoadedModel
    from training.config import load_config
    from training.model import export_untrained

    tmp = Path("/tmp/bench_filter_tiny")
    export_untrained(load_config(preset="cpu-tiny", overrides={"replay_batch_size": 0}), tmp)
    models = [
        ("tiny-vit (cpu-tiny preset)", f"local-dir:{tmp}", imgs, 224),
        ("ViT-B-32", "ViT-B-32", imgs, 224),
    ]
    if not skip_vit_l:
        models.append(("ViT-L-14-336", "ViT-L-14-336", imgs[:16], 336))
    for name, spec, batch_imgs, size in models:
        model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=None)
        model.eval()
        dim = model.visual.output_dim
        rng = np.random.default_rng(0)
        scorer = MuseumCategoryScorer.__new__(MuseumCategoryScorer)
        scorer.loaded = LoadedModel(spec, model, preprocess, None)
        scorer.categories = [c for c in ("organism", "label", "drawer", "jar") for _ in range(4)]
        c = rng.standard_normal((16, dim)).astype(np.float32)
        scorer.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)
        scorer.model_version = "bench"
        scorer.score_batch(batch_imgs[:4])
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for i in range(0, len(batch_imgs), 32):
                scorer.score_batch(batch_imgs[i : i + 32])
            dt = time.perf_counter() - t0
            emit(
                {
                    "bench": "museum_category",
                    "model": name,
                    "weights": "random (config-built)",
                    "size": size,
                    "threads": threads,
                    "batch": 32,
                    "images": len(batch_imgs),
                    "images_per_s": round(len(batch_imgs) / dt, 1),
                    "seconds": round(dt, 2),
                    "peak_rss_mb": round(peak_rss_mb()),
                }
            )


def bench_sql(n: int) -> None:
    import duckdb

    from etl.filter.image_type import image_type_sql, load_rules

    con = duckdb.connect()
    con.execute(f"""CREATE TABLE raw_records AS SELECT
        'r' || i AS record_id, 'gbif' AS source, 'o' || (i // 3) AS occurrence_id,
        (['PRESERVED_SPECIMEN', 'HUMAN_OBSERVATION', 'MACHINE_OBSERVATION'])[1 + i % 3] AS basis_of_record,
        (['iNaturalist.org', 'Natural History Museum', 'Snapshot Wildlife'])[1 + (i // 7) % 3] AS publisher,
        'ds' || (i % 50) AS dataset_key, 'other' AS img_type,
        CASE WHEN i % 5 = 0 THEN '{{"eventRemarks": "camera trap"}}' ELSE '{{}}' END AS payload,
        NULL::VARCHAR AS drop_reason
        FROM range({n}) t(i)""")
    expr = image_type_sql(load_rules())
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE t AS SELECT record_id, {expr} AS label FROM raw_records r")
    t1 = time.perf_counter()
    con.execute("""CREATE TABLE b AS SELECT record_id, count(*) OVER (PARTITION BY source, occurrence_id) AS n
                   FROM raw_records WHERE drop_reason IS NULL""")
    t2 = time.perf_counter()
    emit(
        {
            "bench": "image_type_burst_sql",
            "records": n,
            "image_type_records_per_s": round(n / (t1 - t0)),
            "burst_records_per_s": round(n / (t2 - t1)),
            "seconds": round(t2 - t0, 2),
            "peak_rss_mb": round(peak_rss_mb()),
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--skip-vit-l", action="store_true")
    args = p.parse_args()
    imgs = images(args.images)
    bench_sql(args.records)
    bench_faces(imgs)
    bench_museum(imgs, args.skip_vit_l)


if __name__ == "__main__":
    main()
