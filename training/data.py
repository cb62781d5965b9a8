"""Two WebDataset streams: a dataset version (image + every caption type) and a replay set (`jpg` + `txt`).

Shards are drawn by `SeededShardSampler`: `WebDataset(resampled=True)` seeds its shard sampler from the
process id and the clock, which makes two runs with the same seed see different data.
"""

from __future__ import annotations

import glob
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds

from warehouse.contracts import TRAINING_TEXT_TYPES


def _bio_sample(preprocess: Callable) -> Callable:
    def make(sample: dict) -> tuple:
        caps = [sample[f"{t}.txt"] for t in TRAINING_TEXT_TYPES]
        return (preprocess(sample["jpg"]), *caps)

    return make


def _seeded(fn: Callable, seed: int) -> Callable:
    """A pipeline stage applying `fn` with the torch RNG seeded by (seed, the sample's index in the global
    stream): random crops depend on the sample's position alone, not on the global RNG, lookahead in
    batching, where a run resumed, or which rank reads the sample."""

    def stage(samples: Iterator) -> Iterator:
        for sample in samples:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + sample["__index__"])
                out = fn(sample)
            yield out

    return stage


def _index(samples: Iterator[dict]) -> Iterator[dict]:
    for i, sample in enumerate(samples):
        sample["__index__"] = i
        yield sample


class SeededShardSampler(torch.utils.data.IterableDataset):
    """Shards drawn with replacement from `random.Random(seed)`: the same sequence in every run (webdataset's
    own samplers mix in pid and time unless told otherwise, and their arguments differ across versions)."""

    def __init__(self, urls: list[str], seed: int) -> None:
        super().__init__()
        self.urls, self.seed = list(urls), seed

    def __iter__(self) -> Iterator[dict[str, str]]:
        rng = random.Random(self.seed)
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


def _pipeline(
    urls: list[str], seed: int, skip: int, *stages, resampled: bool = True, rank: int = 0, world: int = 1
) -> wds.DataPipeline:
    """One global sample stream (seeded shards, seeded shuffle), numbered, then cut: `skip` drops that many
    samples before decoding (how a resumed run continues the same data order cheaply; exact with
    `workers=0`, with worker processes each worker has its own stream), and rank r of `world` keeps samples
    r, r + world, ... Without `resampled`, one ordered pass over the shards (for counting and evaluation)."""
    source = [SeededShardSampler(urls, seed)] if resampled else [wds.SimpleShardList(urls)]
    cut = [wds.slice(skip + rank, None, world)] if skip or world > 1 else []
    return wds.DataPipeline(
        *source,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        *([wds.shuffle(1000, rng=random.Random(seed))] if resampled else []),
        _index,
        *cut,
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        *stages,
    )


def _iterate(ds, workers: int):
    return wds.WebLoader(ds, batch_size=None, num_workers=workers) if workers else ds


def bio_loader(
    urls: list[str],
    preprocess: Callable,
    batch_size: int,
    seed: int,
    workers: int = 0,
    skip: int = 0,
    resampled: bool = True,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, dict[str, list[str]]]]:
    """Endless batches (images, {text_type: captions}) from resampled shards, reproducible from `seed`;
    with `resampled=False`, one pass in shard order with a partial last batch. `skip` counts samples of the
    global stream (all ranks together)."""
    if not urls:
        raise ValueError("no training shards: build a dataset version first (`tol shard`)")
    ds = _pipeline(
        urls,
        seed,
        skip,
        _seeded(_bio_sample(preprocess), seed),
        wds.batched(batch_size, partial=not resampled),
        resampled=resampled,
        rank=rank,
        world=world,
    )
    for images, *caps in _iterate(ds, workers):
        yield images, {t: list(c) for t, c in zip(TRAINING_TEXT_TYPES, caps, strict=True)}


def replay_loader(
    path: str,
    preprocess: Callable,
    batch_size: int,
    seed: int,
    workers: int = 0,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, list[str]]]:
    urls = sorted(glob.glob(str(Path(path) / "*.tar")))
    if not urls:
        raise ValueError(f"no replay shards (*.tar) under {path}")
    ds = _pipeline(
        urls,
        seed + 1,
        skip,
        _seeded(lambda sample: (preprocess(sample["jpg"]), str(sample["txt"])), seed + 1),
        wds.batched(batch_size, partial=False),
        rank=rank,
        world=world,
    )
    for images, texts in _iterate(ds, workers):
        yield images, list(texts)
