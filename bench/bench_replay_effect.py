"""Issue 8's question: trained with replay, does the model keep more general image-text alignment (retrieval
on held-out replay pairs) than the same run without replay, at a similar species zero-shot accuracy?
Two runs of the cpu-tiny preset on the demo's dataset version; run `make demo` first (or pass a home)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import demo_version_missing, emit

from evaluation.datasets import load_metadata_folder
from evaluation.retrieval import retrieval_scores
from evaluation.zero_shot import load_model, zero_shot_scores
from training.config import load_config
from training.loop import train
from warehouse.catalog import open_catalog


def main(home: str = "tol-data", steps: int = 300) -> None:
    if demo_version_missing(home, Path(__file__).stem):
        return
    catalog = open_catalog(home)
    world = Path(home) / "sample_world"
    result: dict = {"bench": "replay_effect", "steps": steps}
    for replay in (0, 8):
        cfg = load_config(
            preset="cpu-tiny",
            overrides={
                "dataset_version": "sample-v1",
                "steps": steps,
                "replay_batch_size": replay,
                "replay_path": str(world / "replay" / "train") if replay else None,
            },
        )
        run = train(catalog, cfg, progress=False)
        model = load_model(run["export_path"])
        zs = zero_shot_scores(model, load_metadata_folder(world / "eval", "taxon"), progress=False)
        rt = retrieval_scores(model, world / "replay" / "heldout")
        result[f"replay_{replay}"] = {
            "run_id": run["run_id"],
            "zero_shot_top1": round(zs["top1"], 4),
            **{k: round(v, 4) for k, v in rt.items() if k != "n"},
            "n_pairs": rt["n"],
        }
    a, b = result["replay_8"], result["replay_0"]
    result["retrieval_i2t_r1_gain"] = round(a["image_to_text_r1"] - b["image_to_text_r1"], 4)
    result["zero_shot_top1_change_points"] = round(100 * (a["zero_shot_top1"] - b["zero_shot_top1"]), 2)
    emit(result)


if __name__ == "__main__":
    main(*sys.argv[1:2])
