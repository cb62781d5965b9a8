"""Image-text retrieval on a WebDataset folder of `jpg` + `txt` pairs (e.g. held-out replay pairs):
recall@k in both directions, the measure of general alignment that replay is meant to keep."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from evaluation.zero_shot import LoadedModel


def recall_at_k(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Row i's match is column i. Duplicate captions count as hits (ties in text, not in rank)."""
    n = similarity.shape[0]
    ranks_i2t = (similarity > similarity[np.arange(n), np.arange(n)][:, None]).sum(axis=1)
    ranks_t2i = (similarity[np.arange(n), np.arange(n)][:, None] < similarity.T).sum(axis=1)
    out = {}
    for k in ks:
        out[f"image_to_text_r{k}"] = float(np.mean(ranks_i2t < k))
        out[f"text_to_image_r{k}"] = float(np.mean(ranks_t2i < k))
    return out


@torch.no_grad()
def retrieval_scores(m: LoadedModel, folder: str | Path, batch_size: int = 64) -> dict[str, Any]:
    urls = sorted(glob.glob(str(Path(folder) / "*.tar")))
    if not urls:
        raise FileNotFoundError(f"no *.tar under {folder}")
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pilrgb").to_tuple("jpg", "txt"))
    images, texts = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = torch.stack([m.preprocess(img) for img, _ in chunk])
        images.append(torch.nn.functional.normalize(m.model.encode_image(batch), dim=-1))
        tokens = m.tokenizer([txt for _, txt in chunk])
        texts.append(torch.nn.functional.normalize(m.model.encode_text(tokens), dim=-1))
    sim = (torch.cat(images) @ torch.cat(texts).T).numpy()
    return {"n": len(pairs), **recall_at_k(sim)}
