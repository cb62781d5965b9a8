"""The training loop: CLIP InfoNCE on the biology batch plus InfoNCE on the replay batch through the replay
projector, one shared logit scale, one text type per step, AdamW + cosine schedule, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.nn.functional import normalize
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.config import TrainConfig
from training.data import bio_loader, replay_loader
from training.distributed import broadcast, init_distributed, mean_across
from training.model import NORMALIZATION, ReplayCLIP, build_clip, export_open_clip
from warehouse import writers
from warehouse.catalog import Catalog
from warehouse.contracts import TRAINING_TEXT_TYPES, check_name
from warehouse.lake import new_run_id
from warehouse.locks import train_lock
from warehouse.stage_runs import StageRun
from warehouse.versions import shard_urls

log = logging.getLogger("tol.train")


def text_type_for_step(cfg: TrainConfig, step: int) -> str:
    """One caption type per step for the whole batch, reproducible from (seed, step) alone."""
    if cfg.text_type != "random":
        return cfg.text_type
    return random.Random(cfg.seed * 1_000_003 + step).choice(TRAINING_TEXT_TYPES)


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, norms, embeddings' scale and the logit scale (open_clip's rule)."""

    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or any(k in name for k in ("bn", "ln", "bias", "logit_scale", "norm"))

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _tokenizer(cfg: TrainConfig, mcfg: dict[str, Any]):
    if cfg.model_cfg is None and open_clip.get_model_config(cfg.model) is not None:
        return open_clip.get_tokenizer(cfg.model)
    return open_clip.tokenizer.SimpleTokenizer(
        context_length=mcfg.get("text_cfg", {}).get("context_length", 77)
    )


def _save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _clip_loss(loss_fn: ClipLoss, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return loss_fn(normalize(img, dim=-1), normalize(txt, dim=-1), scale)


ProgressFn = Callable[[dict[str, Any]], None]


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def train(
    catalog: Catalog, cfg: TrainConfig, progress: bool = True, on_progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Train (or resume) a run; returns its summary. Rows go to `training_runs` and `stage_runs`.

    Every `log_every` steps a line (step, loss, samples/s, ETA) goes to the `tol.train` logger and the same
    record (with `steps` and `eta_s`) to `on_progress`, on rank 0 only.

    Under torchrun (WORLD_SIZE > 1) this is one rank of a data-parallel run (training/distributed.py):
    `batch_size` and `replay_batch_size` are per device, and only rank 0 writes to the catalog and disk."""
    dist = init_distributed()
    run_id = check_name("run", broadcast(cfg.run_id or new_run_id("train"), dist))
    if not dist.main:
        return _train(catalog, cfg, dist, run_id, SimpleNamespace(details={}), progress, None)
    # The run's lock is held from before its checkpoint is read until its last row is written: a second
    # process training the same run id waits, and a killed one is found `interrupted` by the next run.
    stage_id = f"stage-{run_id}-{uuid.uuid4().hex[:8]}"
    with StageRun(catalog, "train", config=cfg.to_dict(), run_id=stage_id, lock=train_lock(run_id)) as stage:
        return _train(catalog, cfg, dist, run_id, stage, progress, on_progress)


class RunExistsError(RuntimeError):
    """A run id that already has a run, given without `resume`: training it again would replace its record,
    metrics, checkpoint and export."""


def _status(catalog: Catalog, run_id: str) -> str | None:
    with catalog.connect() as con:
        row = con.execute("SELECT status FROM training_runs WHERE run_id = ?", [run_id]).fetchone()
    return row[0] if row else None


def finished_summary(catalog: Catalog, run_id: str) -> dict[str, Any]:
    """What `train` returned for a run that succeeded, read back from `training_runs`."""
    with catalog.connect() as con:
        export, steps, metrics = con.execute(
            "SELECT export_path, steps, metrics FROM training_runs WHERE run_id = ?", [run_id]
        ).fetchone()
    return {"run_id": run_id, "export_path": export, "steps": steps, **json.loads(metrics or "{}")}


def refuse_overwrite(catalog: Catalog, run_id: str, cfg: TrainConfig) -> None:
    """A new run (no `resume`) under an id that has a catalog row or files is refused, whatever its status."""
    if cfg.resume:
        return
    status = _status(catalog, run_id)
    run_dir = catalog.runs / run_id
    if status is not None or (run_dir.exists() and any(run_dir.iterdir())):
        raise RunExistsError(
            f"run {run_id} exists ({status or 'files only'}): pass resume=latest to continue it, or choose "
            "another run id; training it afresh would replace its metrics, checkpoint and export"
        )


def checkpoint_path(run_dir: Path, resume: str) -> Path:
    """`latest`, or a checkpoint file of this run (under its `checkpoints/`); any other path is refused."""
    folder = (run_dir / "checkpoints").resolve()
    if resume == "latest":
        return folder / "latest.pt"
    path = Path(resume)
    path = (path if path.is_absolute() else folder / path).resolve()
    if path.parent != folder or path.suffix != ".pt":
        raise ValueError(
            f"resume takes `latest` or a .pt checkpoint of this run under {folder}, not {resume!r}"
        )
    return path


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint as plain data: tensors, numbers, strings and containers (`weights_only=True`), never an
    object whose unpickling runs code. Ours hold nothing else (the RNG states are a tensor and a tuple)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for a file that is not plain data
        raise ValueError(f"{path} is not a plain-data checkpoint (refused, not unpickled): {exc}") from exc


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metric lines of steps up to `step` (the checkpoint resumed from), so a resumed run does not
    log the steps it repeats twice; rewritten atomically."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _train(
    catalog: Catalog,
    cfg: TrainConfig,
    dist,
    run_id: str,
    stage,
    progress: bool,
    on_progress: ProgressFn | None,
) -> dict[str, Any]:
    run_dir = catalog.runs / run_id
    if dist.main:
        refuse_overwrite(catalog, run_id, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(cfg.seed)
    device = _device(cfg)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    clip, mcfg = build_clip(cfg)
    model = ReplayCLIP(clip).to(device)
    model.replay_proj.requires_grad_(bool(cfg.replay_batch_size))  # unused without replay (DDP needs to know)
    if cfg.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    image_size = mcfg["vision_cfg"]["image_size"]
    mean, std = NORMALIZATION[cfg.normalization]
    preprocess = open_clip.image_transform(image_size, is_train=True, mean=mean, std=std)
    tokenizer = _tokenizer(cfg, mcfg)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )
    step = 0
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    path = checkpoint_path(run_dir, cfg.resume) if cfg.resume else ckpt_path
    if cfg.resume == "latest" and not path.exists():
        # Never checkpointed (new, or killed before its first checkpoint): the latest state is the start, so
        # `resume=latest` is a command a scheduler can repeat. Said, not silent.
        log.warning("run %s has no checkpoint yet; resume=latest starts it from step 0", run_id)
        stage.details["resumed_from_step"] = 0
    elif cfg.resume:
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        state = load_checkpoint(path, device)
        done = state["step"] >= cfg.steps and _status(catalog, run_id) == "succeeded" if dist.main else None
        if broadcast(done, dist):  # every rank stops together; only rank 0 reads the catalog
            # The same command again after the run finished (a scheduler's repeat, a rerun after a kill
            # that came after the last write): nothing to do, and nothing it wrote is touched.
            log.info("run %s already trained its %d steps; nothing to resume", run_id, state["step"])
            return finished_summary(catalog, run_id) if dist.main else {"run_id": run_id}
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])  # augmentations draw from it: same crops as an unbroken run
        random.setstate(state["python_rng"])
    wrapped = model
    if dist.enabled:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(wrapped) if cfg.compile else wrapped
    # Only rank 0 reads the catalog: DuckDB allows one writing process, and the others need only the URLs.
    urls = broadcast(shard_urls(catalog, cfg.dataset_version, "train") if dist.main else None, dist)
    # A resumed run skips exactly the samples already consumed, so it sees the data an unbroken run would.
    consumed = step * cfg.accum_steps * dist.world
    ranks = {"rank": dist.rank, "world": dist.world}
    bio = bio_loader(
        urls, preprocess, cfg.batch_size, cfg.seed, cfg.workers, skip=consumed * cfg.batch_size, **ranks
    )
    replay = (
        replay_loader(
            cfg.replay_path,
            preprocess,
            cfg.replay_batch_size,
            cfg.seed,
            cfg.workers,
            skip=consumed * cfg.replay_batch_size,
            **ranks,
        )
        if cfg.replay_batch_size
        else None
    )
    # Across ranks: each rank's images against every rank's captions, gradients flowing through the gather.
    loss_fn = ClipLoss(
        local_loss=dist.enabled, gather_with_grad=dist.enabled, rank=dist.rank, world_size=dist.world
    )
    if dist.main:
        writers.training_started(
            catalog, run_id, cfg.dataset_version, {**cfg.to_dict(), "devices": dist.world}, cfg.steps
        )
    metrics_path = run_dir / "metrics.jsonl"
    if dist.main:
        _trim_metrics(metrics_path, step)
    history: list[dict[str, Any]] = []
    try:
        model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=step,
            desc="train",
            unit="step",
            disable=not progress,
            mininterval=2.0,
        )
        t0, seen, start_step = time.perf_counter(), 0, step
        log.info(
            "run %s: %d steps of %d on %s (%s), replay %s",
            run_id,
            cfg.steps - step,
            cfg.batch_size,
            cfg.dataset_version,
            device,
            f"{cfg.replay_batch_size} per step from {cfg.replay_path}" if replay is not None else "off",
        )
        while step < cfg.steps:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, cfg)
            text_type = text_type_for_step(cfg, step)
            optimizer.zero_grad(set_to_none=True)
            logs = {"loss_bio": 0.0, "loss_replay": 0.0}
            for micro in range(cfg.accum_steps):
                images, caps = next(bio)
                inputs = [images.to(device), tokenizer(caps[text_type]).to(device)]
                if replay is not None:
                    r_images, r_texts = next(replay)
                    inputs += [r_images.to(device), tokenizer(r_texts).to(device)]
                # Gradients are averaged across ranks once per step, on the last micro-batch.
                last = micro == cfg.accum_steps - 1
                sync = wrapped.no_sync() if dist.enabled and not last else nullcontext()
                with sync:
                    with _autocast(cfg, device):
                        feats = forward(*inputs)
                        scale = model.logit_scale.exp()
                        loss_bio = _clip_loss(loss_fn, feats[0], feats[1], scale)
                        loss = loss_bio
                        if replay is not None:
                            loss_replay = _clip_loss(loss_fn, feats[2], feats[3], scale)
                            loss = loss + cfg.replay_weight * loss_replay
                            logs["loss_replay"] += loss_replay.item() / cfg.accum_steps
                    (loss / cfg.accum_steps).backward()
                logs["loss_bio"] += loss_bio.item() / cfg.accum_steps
                seen += images.shape[0] * dist.world
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                logs = {k: mean_across(v, dist) for k, v in logs.items()}  # every rank's batch counts
                rec = {
                    "step": step,
                    "text_type": text_type,
                    "lr": optimizer.param_groups[0]["lr"],
                    "logit_scale": model.logit_scale.exp().item(),
                    "samples_per_s": seen / (time.perf_counter() - t0),
                    **logs,
                }
                history.append(rec)
                elapsed = time.perf_counter() - t0
                eta = elapsed / (step - start_step) * (cfg.steps - step)
                if dist.main:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    log.info(
                        "step %d/%d  loss %.3f  replay %.3f  %.1f samples/s  ETA %s",
                        step,
                        cfg.steps,
                        logs["loss_bio"],
                        logs["loss_replay"],
                        rec["samples_per_s"],
                        format_eta(eta),
                    )
                    if on_progress is not None:
                        on_progress({**rec, "steps": cfg.steps, "eta_s": eta})
                bar.set_postfix(loss=f"{logs['loss_bio']:.3f}", replay=f"{logs['loss_replay']:.3f}")
            if dist.main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                _save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "step": step,
                        "config": cfg.to_dict(),
                        "model_cfg": mcfg,
                        "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(),
                    },
                    ckpt_path,
                )
        bar.close()
        export = run_dir / "export"
        final = history[-1] if history else {}
        metrics = {
            "final": final,
            "samples_seen": seen,
            "seconds": time.perf_counter() - t0,
            "normalization": cfg.normalization,
            "devices": dist.world,
        }
        if dist.main:
            export_open_clip(model, mcfg, export)
            writers.training_succeeded(catalog, run_id, str(ckpt_path), str(export), metrics)
            stage.n_in, stage.n_out = seen, step
            stage.details.update({"training_run": run_id, **metrics})
    except BaseException as exc:
        if dist.main:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            writers.training_ended(catalog, run_id, status)
        raise
    return {"run_id": run_id, "export_path": str(export), "steps": step, **metrics}
