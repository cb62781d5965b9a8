"""Two WebDataset streams: a dataset version (image + every caption type) and a replay set (`jpg` + `txt`).

Shards are drawn by `SeededShardSampler`: `WebDataset(resampled=True)` seeds its shard sampler from the
process id and the clock, which makes two runs with the same seed see different data.
"""

from __future__ import annotations

import glob
import io
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from warehouse.contracts import TRAINING_TEXT_TYPES

log = logging.getLogger("tol.train")

# A shard's members are data from whoever wrote the tar (a replay set is often someone else's web images):
# only the image and the captions the loaders read are decoded, by the two decoders below. webdataset's
# default handlers would unpickle `.pyd`/`.pickle` members and `torch.load` `.pth` ones, running their code.
IMAGE_MEMBER = "jpg"
MAX_CONSECUTIVE_BAD_SHARDS = 8


class UnreadableShardsError(RuntimeError):
    """Training stopped: its shards could not be read (deleted, overwritten or corrupt) several times running."""


def _decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _decoder(texts: tuple[str, ...]) -> Callable[[dict], dict]:
    """Keep `jpg` (decoded to RGB) and the named `.txt` members (UTF-8); every other member is dropped
    undecoded, whatever its extension says."""

    def decode(sample: dict) -> dict:
        missing = [k for k in (IMAGE_MEMBER, *texts) if k not in sample]
        if missing:
            raise ValueError(f"sample {sample.get('__key__')!r} has no {', '.join(missing)} member")
        out = {k: sample[k] for k in ("__key__", "__url__", "__index__") if k in sample}
        out[IMAGE_MEMBER] = _decode_image(sample[IMAGE_MEMBER])
        for key in texts:
            out[key] = bytes(sample[key]).decode("utf-8")
        return out

    return decode


class ShardReadGuard:
    """webdataset's handler for shard-level errors, with a bound: training skips an unreadable shard (with a
    warning), but after `limit` shards in a row gave no sample it stops with `UnreadableShardsError` instead
    of drawing shards for ever while holding its lock. A sample read resets the count."""

    def __init__(self, limit: int = MAX_CONSECUTIVE_BAD_SHARDS) -> None:
        self.limit, self.bad = limit, 0

    def handler(self, exn: Exception) -> bool:
        self.bad += 1
        log.warning("unreadable shard (%d in a row): %s", self.bad, exn)
        if self.bad >= self.limit:
            raise UnreadableShardsError(
                f"{self.bad} shards in a row could not be read (last: {exn}); were the version's shards "
                "deleted or overwritten while training? (`tol versions verify` checks them)"
            ) from exn
        return True

    def reset(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.bad = 0
            yield sample


def _bio_sample(preprocess: Callable) -> Callable:
    decode = _decoder(tuple(f"{t}.txt" for t in TRAINING_TEXT_TYPES))

    def make(sample: dict) -> tuple:
        sample = decode(sample)
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
                try:
                    out = fn(sample)
                except (OSError, ValueError) as exc:  # an undecodable image or caption: skipped, said
                    log.warning(
                        "sample %s of %s skipped: %s", sample.get("__key__"), sample.get("__url__"), exc
                    )
                    continue
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
    guard = ShardReadGuard(min(MAX_CONSECUTIVE_BAD_SHARDS, max(2, 2 * len(urls))))
    # No decoding here: each stage decodes only the members it reads (see `_decoder`).
    return wds.DataPipeline(
        *source,
        wds.tarfile_to_samples(handler=guard.handler),
        guard.reset,
        *([wds.shuffle(1000, rng=random.Random(seed))] if resampled else []),
        _index,
        *cut,
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


def _replay_sample(preprocess: Callable) -> Callable:
    decode = _decoder(("txt",))

    def make(sample: dict) -> tuple:
        sample = decode(sample)
        return preprocess(sample[IMAGE_MEMBER]), sample["txt"]

    return make


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
        _seeded(_replay_sample(preprocess), seed + 1),
        wds.batched(batch_size, partial=False),
        rank=rank,
        world=world,
    )
    for images, texts in _iterate(ds, workers):
        yield images, list(texts)
