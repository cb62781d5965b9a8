"""Two WebDataset streams: a dataset version (image + every caption type) and a replay set (`jpg` + `txt`)."""

from __future__ import annotations

import glob
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds

from training.config import TEXT_TYPES


def _bio_sample(preprocess: Callable) -> Callable:
    def make(sample: dict) -> tuple:
        caps = [sample[f"{t}.txt"] for t in TEXT_TYPES]
        return (preprocess(sample["jpg"]), *caps)

    return make


def bio_loader(
    urls: list[str], preprocess: Callable, batch_size: int, seed: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, dict[str, list[str]]]]:
    """Endless batches (images, {text_type: captions}) from resampled shards, seeded."""
    if not urls:
        raise ValueError("no training shards: build a dataset version first (`tol shard`)")
    ds = (
        wds.WebDataset(
            urls,
            resampled=True,
            shardshuffle=False,
            seed=seed,
            handler=wds.warn_and_continue,
            empty_check=False,
        )
        .shuffle(1000, rng=random.Random(seed))
        .decode("pilrgb", handler=wds.warn_and_continue)
        .map(_bio_sample(preprocess), handler=wds.warn_and_continue)
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers) if workers else ds
    for images, *caps in loader:
        yield images, {t: list(c) for t, c in zip(TEXT_TYPES, caps, strict=True)}


def replay_loader(
    path: str, preprocess: Callable, batch_size: int, seed: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    urls = sorted(glob.glob(str(Path(path) / "*.tar")))
    if not urls:
        raise ValueError(f"no replay shards (*.tar) under {path}")
    ds = (
        wds.WebDataset(
            urls,
            resampled=True,
            shardshuffle=False,
            seed=seed + 1,
            handler=wds.warn_and_continue,
            empty_check=False,
        )
        .shuffle(1000, rng=random.Random(seed + 1))
        .decode("pilrgb", handler=wds.warn_and_continue)
        .to_tuple("jpg", "txt")
        .map_tuple(preprocess, str)
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers) if workers else ds
    for images, texts in loader:
        yield images, list(texts)
