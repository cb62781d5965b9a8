"""Typed, validated training config: presets, YAML files and `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from warehouse.contracts import (
    MAX_STEPS,
    MAX_THREADS,
    MAX_WORKERS,
    TRAINING_TEXT_TYPES,
    check_bound,
    check_name,
)

# A ~9 M-parameter ViT that trains on the sample world in minutes on 2 CPU cores.
TINY_VIT_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 64,
        "layers": 4,
        "width": 192,
        "patch_size": 8,
        "head_width": 64,
        "mlp_ratio": 3.0,
    },
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 3},
}


# auto: bf16 autocast on CUDA, fp32 elsewhere; bf16: bf16 autocast on any device; fp32: no autocast.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


log = logging.getLogger("tol.train")


@dataclass(frozen=True)
class TrainConfig:
    dataset_version: str = ""
    model: str = "tiny-vit"  # a preset name here, or any open_clip architecture name
    model_cfg: dict[str, Any] | None = None  # explicit open_clip model config; wins over `model`
    pretrained: str | None = None  # a local weights path, or an open_clip pretrained tag (online)
    replay_path: str | None = None  # folder of replay WebDataset tars (`jpg` + `txt`)
    replay_batch_size: int = 0  # 0 turns replay off: plain CLIP training
    replay_weight: float = 1.0
    batch_size: int = 32
    steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    text_type: str = "random"  # drawn per step from TRAINING_TEXT_TYPES, or one fixed type
    normalization: str = "openai"  # or "imagenet"; recorded in the export
    seed: int = 42
    checkpoint_every: int = 100
    log_every: int = 25
    accum_steps: int = 1
    grad_checkpointing: bool = False
    compile: bool = False
    precision: str = "auto"  # one of PRECISIONS
    device: str = "auto"
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    run_id: str | None = None
    resume: str | None = None  # "latest" (with run_id) or a checkpoint path

    def __post_init__(self) -> None:
        if self.text_type != "random" and self.text_type not in TRAINING_TEXT_TYPES:
            raise ValueError(
                f"text_type must be 'random' or one of {TRAINING_TEXT_TYPES}, got {self.text_type!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.normalization not in ("openai", "imagenet"):
            raise ValueError("normalization must be 'openai' or 'imagenet'")
        if self.batch_size < 2 or self.steps < 1 or self.accum_steps < 1:
            raise ValueError("batch_size must be >= 2, steps and accum_steps >= 1")
        check_bound("steps", self.steps, MAX_STEPS, 1)
        check_bound("threads", self.threads, MAX_THREADS)
        check_bound("workers", self.workers, MAX_WORKERS)
        if self.replay_batch_size and not self.replay_path:
            raise ValueError(
                "replay_batch_size > 0 needs replay_path=FOLDER (or replay_batch_size=0 for plain CLIP)"
            )
        if self.replay_batch_size == 1:
            raise ValueError("replay_batch_size must be 0 (off) or >= 2 (a contrastive batch)")
        if self.run_id is not None:
            check_name("run", self.run_id)  # it names the run's folder under runs/
        if self.dataset_version:
            check_name("version", self.dataset_version)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "cpu-tiny": {
        "model": "tiny-vit",
        "batch_size": 32,
        "replay_batch_size": 8,
        "steps": 300,
        "lr": 1e-3,
        "warmup_steps": 30,
        "checkpoint_every": 100,
    },
    # The paper's recipe (BioCLIP 2, training section): ViT-L/14 from LAION-2B, 2816 + 320 per GPU, 30 epochs.
    "gpu-paper": {
        "model": "ViT-L-14",
        "pretrained": "laion2b_s32b_b82k",
        "batch_size": 2816,
        "replay_batch_size": 320,
        "lr": 1e-4,
        "warmup_steps": 1875,
        "weight_decay": 0.2,
        "steps": 71_000,
        "grad_checkpointing": True,
        "precision": "bf16",
        "normalization": "imagenet",
        "checkpoint_every": 1000,
        "workers": 8,
    },
}


class OverrideError(ValueError):
    """A `key=value` override whose value does not fit the key's type."""


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """`value` as the type of TrainConfig field `key`, strictly: a bool is `true` or `false` (a misspelt
    `ture` is an error, not False), numbers must parse, `none`/`null` only where the field is optional."""
    spec = str(typ)
    base = spec.replace("| None", "").replace("None |", "").strip()
    want = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(base, "a JSON object")
    if not isinstance(value, str):
        fits = {
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
        }.get(base, True)
        if value is None and "None" not in spec:
            fits = False
        if not fits:
            raise OverrideError(f"{key} takes {want}, not {value!r}")
        return float(value) if base == "float" and value is not None else value
    text = value.strip()
    if text.lower() in ("none", "null"):
        if "None" in spec:
            return None
        raise OverrideError(f"{key} is not optional: give a {base}, not {text!r}")
    try:
        if base == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if "dict" in base:
            parsed = json.loads(text)
            if not isinstance(parsed, dict):
                raise ValueError
            return parsed
    except ValueError:
        raise OverrideError(f"{key} takes {want}, not {text!r}") from None
    return text


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """Preset, then YAML file, then `key=value` overrides; unknown keys are an error, not ignored."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    explicit: set[str] = set()  # keys given by the file or the overrides, not the preset
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
        explicit |= set(loaded)
    types = {f.name: f.type for f in fields(TrainConfig)}
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} must be key=value")
            items.append(tuple(item.split("=", 1)))
    for key, value in items:
        if key not in types:
            raise ValueError(f"unknown config key {key!r}; known: {', '.join(sorted(types))}")
        values[key] = _coerce(key, value, types[key])
        explicit.add(key)
    unknown = set(values) - set(types)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    for key, typ in types.items():  # a YAML file's values too, by the same rules
        if key in values:
            values[key] = _coerce(key, values[key], typ)
    preset_replay = (
        preset and "replay_batch_size" not in explicit and PRESETS[preset].get("replay_batch_size")
    )
    if preset_replay and not values.get("replay_path"):
        # The preset's replay needs a replay set nobody gave: train without replay, and say so. A
        # replay_batch_size the user gave without a replay_path stays an error (TrainConfig's check).
        log.warning(
            "replay off: preset %s asks for %s replay pairs per step but no replay_path is given (set "
            "replay_path to a folder of replay shards, or replay_batch_size=0 to train without replay)",
            preset,
            values["replay_batch_size"],
        )
        values["replay_batch_size"] = 0
    return TrainConfig(**values)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cfg: dict[str, Any] = field(default_factory=dict)
