"""GPU training throughput: ViT-B/16 (open_clip config, random init: no download), bf16 autocast, the replay
step exactly as `training/loop.py` takes it (biology batch + replay batch through the replay projector, two
InfoNCE terms), synthetic tensors already on the device so the number is the model's, not the data loader's.
Prints samples/s per GPU as JSON; meant to finish in well under 5 minutes on one H100/H200-class GPU.

Usage: bench_gpu_train.py [--model ViT-B-16] [--batch 256] [--replay 32] [--steps 30] [--warmup 5]
       [--grad-checkpointing] [--compile]
Without CUDA it prints a `skipped` line (a CPU figure would be meaningless); `--smoke-cpu` runs the same code
on the CPU in fp32 with whatever sizes are given, to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip
import torch
from _common import emit
from open_clip.loss import ClipLoss
from torch.nn.functional import normalize

from training.loop import param_groups
from training.model import ReplayCLIP


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--replay", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.smoke_cpu:
        emit({"bench": "gpu_train", "skipped": "no CUDA device visible"})
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    torch.manual_seed(0)
    clip = open_clip.create_model(args.model, pretrained=None)  # architecture only: no weights to fetch
    model = ReplayCLIP(clip).to(device)
    if args.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    forward = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    size = clip.visual.image_size[0] if isinstance(clip.visual.image_size, tuple) else clip.visual.image_size
    ctx = clip.context_length
    images = torch.randn(args.batch, 3, size, size, device=device)
    tokens = torch.randint(1, 49407, (args.batch, ctx), device=device)
    r_images = torch.randn(args.replay, 3, size, size, device=device)
    r_tokens = torch.randint(1, 49407, (args.replay, ctx), device=device)
    loss_fn = ClipLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast:
            f = forward(images, tokens, r_images, r_tokens)
            scale = model.logit_scale.exp()
            loss = loss_fn(normalize(f[0], dim=-1), normalize(f[1], dim=-1), scale) + loss_fn(
                normalize(f[2], dim=-1), normalize(f[3], dim=-1), scale
            )
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        last = step()
    sync()
    seconds = time.perf_counter() - t0
    emit(
        {
            "bench": "gpu_train",
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "none (smoke test on CPU)",
            "model": args.model,
            "batch": args.batch,
            "replay_batch": args.replay,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "grad_checkpointing": args.grad_checkpointing,
            "compile": args.compile,
            "steps": args.steps,
            "seconds": round(seconds, 2),
            "bio_samples_per_s": round(args.batch * args.steps / seconds, 1),
            "all_samples_per_s": round((args.batch + args.replay) * args.steps / seconds, 1),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda"
            else None,
            "final_loss": round(last, 4),
        }
    )


if __name__ == "__main__":
    main()
