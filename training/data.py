"""Two WebDataset streams: a dataset version (image + every caption type) and a replay set (`jpg` + `txt`).

Built from `ResampledShards(..., deterministic=True)`: `WebDataset(resampled=True)` seeds its shard sampler
from the process id and the clock, which makes two runs with the same seed see different data.
"""

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


def _pipeline(urls: list[str], seed: int, *stages) -> wds.DataPipeline:
    return wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(1000, rng=random.Random(seed)),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        *stages,
    )


def _iterate(ds, workers: int):
    return wds.WebLoader(ds, batch_size=None, num_workers=workers) if workers else ds


def bio_loader(
    urls: list[str], preprocess: Callable, batch_size: int, seed: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, dict[str, list[str]]]]:
    """Endless batches (images, {text_type: captions}) from resampled shards, reproducible from `seed`."""
    if not urls:
        raise ValueError("no training shards: build a dataset version first (`tol shard`)")
    ds = _pipeline(
        urls,
        seed,
        wds.map(_bio_sample(preprocess), handler=wds.warn_and_continue),
        wds.batched(batch_size, partial=False),
    )
    for images, *caps in _iterate(ds, workers):
        yield images, {t: list(c) for t, c in zip(TEXT_TYPES, caps, strict=True)}


def replay_loader(
    path: str, preprocess: Callable, batch_size: int, seed: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    urls = sorted(glob.glob(str(Path(path) / "*.tar")))
    if not urls:
        raise ValueError(f"no replay shards (*.tar) under {path}")
    ds = _pipeline(
        urls,
        seed + 1,
        wds.to_tuple("jpg", "txt"),
        wds.map_tuple(preprocess, str),
        wds.batched(batch_size, partial=False),
    )
    for images, texts in _iterate(ds, workers):
        yield images, list(texts)
