"""The training configuration: one typed dataclass, loaded from YAML or TOML, overridable per key.

Defaults are the paper's and the release's (section 3.2, appendix A, `options/interlcm.yml`);
each non-obvious field says where its value comes from.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interlcm.choices import VARIANTS, get_variant
from interlcm.config import reject_unknown_keys
from interlcm.train.degradations import DegradationConfig
from interlcm.train.losses import VGG16_CHANNELS

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    weights: str = ""  # weights folder (interlcm-weights init/download): frozen CLIP/UNet/VAE, starting VE/SE
    # VE/SE pair to start from and export as; fixes the step count (3step = 3 network steps)
    variant: str = "3step"
    resolution: int = 0  # 0: the weights folder's (512 for sd15)
    guidance_scale: float = 8.0  # as at inference: the UNet sees w = 7
    gradient_checkpointing: bool = False  # recompute SE, UNet and VAE-decoder activations in backward

    # --- data --------------------------------------------------------------------------------
    data: str = ""  # folder of square HQ faces (FFHQ-style), any size, resized to `resolution`
    # "paper": Eq. 3 ranges (sigma 1-15, down 1-30, noise 0-20, JPEG 30-90);
    # "release": the narrower ranges the released checkpoints actually trained on.
    degradation_preset: str = "paper"
    # DegradationConfig overrides on top of the preset, e.g. {task: inpainting}
    degradation: dict[str, Any] = field(default_factory=dict)
    hflip: bool = True
    num_workers: int = 0

    # --- optimisation ------------------------------------------------------------------------
    batch_size: int = 8  # per process and micro-batch; the paper's global batch is 8
    grad_accum: int = 1  # micro-batches per optimiser step
    max_steps: int = 15000  # optimiser steps (the release: 15000 iterations)
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_min_ratio: float = 0.0  # the cosine schedule ends at lr * lr_min_ratio
    ema_decay: float = 0.997
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the release does not clip)
    mixed_precision: str = "auto"  # auto: bf16 on CUDA (fp16 if unsupported), fp32 on CPU; CUDA only

    # --- losses ------------------------------------------------------------------------------
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_weights: str = ""  # torchvision vgg16 state dict (vgg16-397923af.pth); required to train
    lpips_weights: str = ""  # optional lpips package `weights/v0.1/vgg.pth` (the linear layers)
    perceptual_channels: tuple[int, ...] = VGG16_CHANNELS  # smaller only for tests (random weights)
    allow_random_perceptual: bool = False  # tests only: train with an untrained VGG
    # lambda of L = L1 + L_perc + lambda * L_adv. The release uses a fixed 0.1: its VQGAN-style
    # adaptive weight is defined but never called. adaptive_gan_weight=True multiplies lambda by
    # VQGAN's ||grad L_rec|| / ||grad L_adv|| (taken at the decoded image: the decoder is frozen).
    gan_weight: float = 0.1
    adaptive_gan_weight: bool = False
    disc_start: int = 10001  # first (1-based) iteration with the GAN loss and discriminator updates
    disc_lr: float = 5e-5
    disc_channels: int = 64
    disc_layers: int = 3

    # --- bookkeeping -------------------------------------------------------------------------
    seed: int = 0  # data order, degradations, and the chain's noise (per step, micro-batch, rank)
    out: str = "runs/train"
    device: str = "auto"  # auto: cuda (LOCAL_RANK under torchrun) if available, else cpu
    log_every: int = 10
    val_every: int = 500
    val_images: int = 4
    ckpt_every: int = 1000  # also exports the EMA encoders to OUT/weights
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.perceptual_channels = tuple(self.perceptual_channels)
        get_variant(self.variant)  # a one-line error for an unknown name
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if self.degradation_preset not in ("paper", "release"):
            raise ValueError(
                f"degradation_preset must be 'paper' or 'release', got {self.degradation_preset!r}"
            )
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        task = self.degradation_config().task
        expected = {"colorization": "colorization", "inpainting": "inpainting"}.get(
            self.variant, "restoration"
        )
        if task != expected:
            raise ValueError(
                f"variant {self.variant!r} is trained on the {expected} task but degradation.task is {task!r}: "
                f"set degradation.task={expected} or pick the matching variant"
            )

    @property
    def model_steps(self) -> int:
        return VARIANTS[self.variant].steps

    def degradation_config(self) -> DegradationConfig:
        base = DegradationConfig.release() if self.degradation_preset == "release" else DegradationConfig()
        return DegradationConfig.from_dict({**base.to_dict(), **self.degradation})

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples as lists: YAML/JSON/torch-safe

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        reject_unknown_keys(cls, data, "training config")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        return cls.from_dict(apply_overrides(read_config_file(Path(path)), overrides))


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"training config {path} must be .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(
            f"training config {path} must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`key=value` strings onto a config dict; values are YAML (`lr=1e-4`, `betas=[0.9,0.99]`);
    `degradation.sigma_range=[1,5]` sets one degradation key."""
    data = dict(data)
    types_ = _field_types()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        head, _, sub = key.partition(".")
        if head not in types_:
            raise ValueError(f"unknown training config key {head!r} in override {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if sub:
            if head != "degradation":
                raise ValueError(f"only degradation.* takes a dotted key, got {key!r}")
            data[head] = {**data.get(head, {}), sub: value}
        else:
            data[head] = _coerce(types_[head], value, key)
    return data


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(kind: Any, value: Any, key: str) -> Any:
    """YAML reads `1e-4` as a string and `5` as an int: convert to the field's type, or say why not."""
    bad = ValueError(f"{key}={value!r} does not fit the field's type {kind}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind in (int, float, str):
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise bad from None
        if kind is int and converted != value and not isinstance(value, str):
            raise bad  # 1.5 -> 1 would be a silent fix
        return converted
    return value  # tuples and dicts: checked by TrainConfig itself
