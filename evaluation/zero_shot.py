"""Zero-shot classification with open_clip's own classifier builder (so our numbers match open_clip's),
top-1/top-5 and accuracy at each rank of the true class; features cached per model and dataset."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image
from tqdm import tqdm

from evaluation.datasets import LabelledImages
from evaluation.metrics import macro_f1
from warehouse.contracts import RANKS

SINGLE_TEMPLATE = (lambda c: f"a photo of {c}.",)
TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "single": SINGLE_TEMPLATE}


@dataclass
class LoadedModel:
    name: str
    model: Any
    preprocess: Any
    tokenizer: Any


def load_model(spec: str, pretrained: str | None = None, device: str = "cpu") -> LoadedModel:
    """MODEL is anything open_clip accepts: `local-dir:PATH`, `hf-hub:ORG/NAME`, an architecture name (with
    `pretrained`), or a plain export folder."""
    if Path(spec).is_dir():
        spec = f"local-dir:{Path(spec).resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=pretrained, device=device)
    model.eval()
    return LoadedModel(spec, model, preprocess, open_clip.get_tokenizer(spec))


@torch.no_grad()
def image_features(
    m: LoadedModel,
    paths: list[Path],
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
    normalize: bool = True,
    stats: dict[str, float] | None = None,
) -> np.ndarray:
    """Image embeddings, L2-normalised unless `normalize` is False (the FishNet and AwA2 heads train on the
    raw ones); cached per model, image list and normalisation, refreshed when an image is newer. `stats`, when
    given, gains `cached` / `embedded` image counts and `embed_seconds`."""
    ident = [m.name, [str(p) for p in paths]] + ([] if normalize else ["raw"])
    key = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]
    cache = cache_dir / f"features-{key}.npy" if cache_dir else None
    if cache and cache.exists() and cache.stat().st_mtime >= max(p.stat().st_mtime for p in paths):
        if stats is not None:
            stats["cached"] = stats.get("cached", 0) + len(paths)
        return np.load(cache)
    start = time.perf_counter()
    device = next(m.model.parameters()).device
    feats = []
    for i in tqdm(range(0, len(paths), batch_size), desc="features", disable=not progress, unit="batch"):
        batch = torch.stack([m.preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
        f = m.model.encode_image(batch.to(device))
        feats.append((torch.nn.functional.normalize(f, dim=-1) if normalize else f).cpu().numpy())
    out = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    if stats is not None:
        stats["embedded"] = stats.get("embedded", 0) + len(paths)
        stats["embed_seconds"] = stats.get("embed_seconds", 0.0) + time.perf_counter() - start
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out


def zero_shot_logits(
    m: LoadedModel,
    data: LabelledImages,
    templates: str = "openai",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Image-to-class logits of shape (images, classes), classes in `data.classnames` order."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    feats = image_features(m, data.paths, cache_dir=cache_dir, progress=progress)
    device = next(m.model.parameters()).device
    classifier = build_zero_shot_classifier(
        m.model,
        m.tokenizer,
        data.classnames,
        TEMPLATES[templates],
        num_classes_per_batch=10,
        device=device,
        use_tqdm=False,
    )
    return (torch.from_numpy(feats) @ classifier.cpu().float()).numpy()


def zero_shot_scores(
    m: LoadedModel,
    data: LabelledImages,
    templates: str = "openai",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    logits = zero_shot_logits(m, data, templates, cache_dir, progress)
    return metrics_from_logits(logits, np.array(data.labels), data.class_lineages)


def metrics_from_logits(
    logits: np.ndarray, labels: np.ndarray, class_lineages: list[dict[str, str | None]]
) -> dict[str, Any]:
    n, k = logits.shape
    order = np.argsort(-logits, axis=1)
    top1 = order[:, 0]
    out: dict[str, Any] = {
        "n": int(n),
        "n_classes": int(k),
        "chance": 1.0 / k,
        "top1": float(np.mean(top1 == labels)),
        "top5": float(np.mean([labels[i] in order[i, :5] for i in range(n)])),
        "macro_f1": macro_f1(labels, top1),
    }
    if class_lineages and class_lineages[0]:
        for rank in RANKS:
            pred = [class_lineages[c].get(rank) for c in top1]
            true = [class_lineages[c].get(rank) for c in labels]
            out[f"rank_acc_{rank}"] = float(np.mean([p == t for p, t in zip(pred, true, strict=True)]))
    return out
