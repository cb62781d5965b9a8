"""Image scorers: a batch of decoded images in, one `Scored` per image out. Each is built once per worker
process from plain settings (what crosses to a worker is a unit descriptor, never a model)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

import numpy as np
from PIL import Image

from etl.filter.support import load_support
from warehouse.contracts import MODEL_SPEC_HELP, check_name


@dataclass(frozen=True)
class Scored:
    score: float
    label: str
    details: dict[str, Any] = field(default_factory=dict)


class ImageScorer(Protocol):
    model: str
    model_version: str

    def score_batch(self, images: list[Image.Image]) -> list[Scored]: ...


@dataclass(frozen=True)
class FaceConfig:
    """MTCNN (facenet-pytorch) with the paper's P/R/O-net thresholds; images are scaled so their long side
    is at most `max_side` first (the detector's cost grows with the pixels; 224 is the benchmark's size)."""

    thresholds: tuple[float, float, float] = (0.9, 0.95, 0.95)
    min_face_size: int = 20
    max_side: int = field(default=224, metadata={"help": "faces: scale images to this long side first"})

    def __post_init__(self) -> None:
        if len(self.thresholds) != 3 or not all(0 < t < 1 for t in self.thresholds):
            raise ValueError(f"faces.thresholds: three numbers in (0, 1), not {self.thresholds}")
        if self.min_face_size < 1 or self.max_side < 32:
            raise ValueError("faces: min_face_size must be >= 1 and max_side >= 32")


def face_model_version(cfg: FaceConfig) -> str:
    """What the faces rows record as their model version: the package and every setting that changes a
    score (a change scores the images again)."""
    try:
        v = version("facenet-pytorch")
    except PackageNotFoundError:
        v = "?"
    return (
        f"facenet-pytorch {v} thresholds={list(cfg.thresholds)} min_face_size={cfg.min_face_size}"
        f" max_side={cfg.max_side}"
    )


def require_facenet():
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise RuntimeError(
            "the faces scorer needs facenet-pytorch, installed without its old pins beside our torch: "
            "pip install --no-deps facenet-pytorch==2.6.0 (make install does this)"
        ) from exc
    return MTCNN


class FaceScorer:
    """score = the highest probability among the faces MTCNN keeps (0 when none); label `face` or `none`."""

    model = "mtcnn"

    def __init__(self, cfg: FaceConfig, device: str = "cpu") -> None:
        mtcnn = require_facenet()
        self.cfg = cfg
        self.model_version = face_model_version(cfg)
        self.detector = mtcnn(
            keep_all=True, thresholds=list(cfg.thresholds), min_face_size=cfg.min_face_size, device=device
        )

    def score_batch(self, images: list[Image.Image]) -> list[Scored]:
        out = []
        for img in images:
            scale = min(1.0, self.cfg.max_side / max(img.size))
            if scale < 1:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
            boxes, probs = self.detector.detect(img)
            kept = [] if probs is None else [float(p) for p in probs if p is not None]
            found = boxes is not None and len(kept) > 0
            details = {"faces": len(kept)}
            if found:
                details["boxes"] = [[round(float(v) / scale, 1) for v in b] for b in boxes]
            out.append(Scored(max(kept, default=0.0), "face" if found else "none", details))
        return out


@dataclass(frozen=True)
class MuseumConfig:
    """Nearest-centroid over open_clip image embeddings. `model` is a training run of this home, an export
    folder, `local-dir:PATH` or `hf-hub:ORG/NAME` (the paper used CLIP ViT-L/14@336px); `support` names the
    centroids `tol filter build-support` stored, computed with that same model."""

    model: str | None = field(
        default=None,
        metadata={"help": "museum_category: " + MODEL_SPEC_HELP},
    )
    support: str = field(
        default="museum",
        metadata={"help": "museum_category: the support set", "flag": "--support", "name": "support set"},
    )
    batch_size: int = 32

    def __post_init__(self) -> None:
        check_name("support set", self.support)  # a name, never a path


class MuseumCategoryScorer:
    """label = the category of the nearest centroid (cosine); score = that similarity; details the runner-up
    category and the margin, so a threshold can ask for a clear winner later."""

    model = "open_clip"

    def __init__(
        self, model_path: str, categories: list[str], centroids: np.ndarray, version: str, device: str = "cpu"
    ) -> None:
        from evaluation.zero_shot import load_model

        self.loaded = load_model(model_path, device=device)
        self.categories = categories
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        self.model_version = version

    def score_batch(self, images: list[Image.Image]) -> list[Scored]:
        feats = embed(self.loaded, images)
        sims = feats @ self.centroids.T
        names = sorted(set(self.categories))
        per = np.stack([sims[:, [c == n for c in self.categories]].max(axis=1) for n in names], axis=1)
        out = []
        for row in per:
            order = np.argsort(-row)
            second = names[order[1]] if len(names) > 1 else None
            margin = float(row[order[0]] - row[order[1]]) if len(names) > 1 else 0.0
            out.append(
                Scored(float(row[order[0]]), names[order[0]], {"second": second, "margin": round(margin, 4)})
            )
        return out


def embed(loaded, images: list[Image.Image]) -> np.ndarray:
    """L2-normalised image embeddings of a batch, as float32 (rows in the order given)."""
    import torch

    with torch.no_grad():
        device = next(loaded.model.parameters()).device
        batch = torch.stack([loaded.preprocess(img.convert("RGB")) for img in images]).to(device)
        f = loaded.model.encode_image(batch)
        return torch.nn.functional.normalize(f, dim=-1).cpu().numpy().astype(np.float32)


def details_json(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True)


# How a worker builds each image scorer from a unit's `scorer_args` (plain JSON values).
def _faces(args: dict[str, Any]) -> ImageScorer:
    return FaceScorer(
        FaceConfig(**{**args["faces"], "thresholds": tuple(args["faces"]["thresholds"])}), args["device"]
    )


def _museum(args: dict[str, Any]) -> ImageScorer:
    support = load_support(args["home"], args["support"])
    return MuseumCategoryScorer(
        support.model_path, support.categories, support.centroids, support.version, args["device"]
    )


IMAGE_SCORERS: dict[str, Callable[[dict[str, Any]], ImageScorer]] = {
    "faces": _faces,
    "museum_category": _museum,
}
