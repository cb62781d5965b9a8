"""open_clip model plus the replay projector: `visual.proj` is split into a biology projector and a replay
projector (initialised as a copy); the backbone and text tower are shared. Export restores `visual.proj`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from training.config import TINY_VIT_CFG, TrainConfig

MODEL_PRESETS: dict[str, dict[str, Any]] = {"tiny-vit": TINY_VIT_CFG}
NORMALIZATION = {
    "openai": (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


def model_config(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.model_cfg:
        return copy.deepcopy(cfg.model_cfg)
    if cfg.model in MODEL_PRESETS:
        return copy.deepcopy(MODEL_PRESETS[cfg.model])
    found = open_clip.get_model_config(cfg.model)
    if found is None:
        raise ValueError(
            f"unknown model {cfg.model!r}: not a preset ({sorted(MODEL_PRESETS)}) nor an open_clip "
            "architecture"
        )
    return found


def build_clip(cfg: TrainConfig) -> tuple[open_clip.CLIP, dict[str, Any]]:
    mcfg = model_config(cfg)
    if cfg.model_cfg is None and cfg.model not in MODEL_PRESETS:
        model = open_clip.create_model(cfg.model, pretrained=cfg.pretrained)
    else:
        model = open_clip.CLIP(**mcfg)
        if cfg.pretrained:
            open_clip.load_checkpoint(model, cfg.pretrained)
    mean, std = NORMALIZATION[cfg.normalization]
    model.visual.image_mean, model.visual.image_std = mean, std
    return model, mcfg


class ReplayCLIP(nn.Module):
    """Biology images go through `bio_proj`, replay images through `replay_proj` (a copy at start)."""

    def __init__(self, clip: open_clip.CLIP) -> None:
        super().__init__()
        proj = getattr(clip.visual, "proj", None)
        if not isinstance(proj, torch.Tensor):
            raise ValueError(
                "the replay projector needs a tower with a `visual.proj` matrix (open_clip ViT); "
                f"{type(clip.visual).__name__} has none"
            )
        self.clip = clip
        self.bio_proj = nn.Parameter(proj.detach().clone())
        self.replay_proj = nn.Parameter(proj.detach().clone())
        clip.visual.proj = None  # the tower now returns pooled features; the projectors are applied here

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, images: torch.Tensor, replay: bool = False) -> torch.Tensor:
        pooled = self.clip.visual(images)
        return pooled @ (self.replay_proj if replay else self.bio_proj)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        replay_images: torch.Tensor | None = None,
        replay_tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Features of one step: biology images and captions, and (when given) replay images and captions.
        One call per step, so DDP sees every parameter use in a single forward."""
        out = (self.encode_image(images), self.encode_text(tokens))
        if replay_images is not None:
            out += (self.encode_image(replay_images, replay=True), self.encode_text(replay_tokens))
        return out

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """A plain open_clip state dict: `visual.proj` is the biology projector; the replay one is dropped."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.clip.state_dict().items()}
        state["visual.proj"] = self.bio_proj.detach().cpu().contiguous()
        return state


def export_open_clip(
    model: ReplayCLIP, mcfg: dict[str, Any], out: Path, interpolation: str = "bicubic"
) -> Path:
    """Write an open_clip folder (`open_clip_config.json` + safetensors) loadable with `local-dir:PATH`."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(model.export_state_dict(), str(out / "open_clip_model.safetensors"))
    model.clip.visual.preprocess_cfg = {"interpolation": interpolation, "resize_mode": "shortest"}
    save_config_for_hf(model.clip, out / "open_clip_config.json", model_config=mcfg)
    meta = json.loads((out / "open_clip_config.json").read_text())
    meta["preprocess_cfg"]["mean"] = list(meta["preprocess_cfg"]["mean"])
    meta["preprocess_cfg"]["std"] = list(meta["preprocess_cfg"]["std"])
    (out / "open_clip_config.json").write_text(json.dumps(meta, indent=2))
    return out


def export_untrained(cfg: TrainConfig, out: Path) -> Path:
    """Export the same architecture at random init (seeded): the baseline a trained model must beat."""
    torch.manual_seed(cfg.seed)
    clip, mcfg = build_clip(cfg)
    return export_open_clip(ReplayCLIP(clip), mcfg, out)
