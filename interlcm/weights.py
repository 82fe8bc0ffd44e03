"""The weights folder: write it (random presets), check it, load it.

```
WEIGHTS/
  lcm/                      diffusers folder: unet/, vae/, scheduler/
  clip/                     transformers CLIPVisionModel folder (config.json + weights)
  visual_encoder_3step.pth  {"params_ema": state_dict}, released layout
  spatial_encoder_3step.pth {"params_ema": state_dict}, diffusers ControlNet keys
  (optional) *_1step.pth, *_colorization.pth, *_inpainting.pth
  interlcm.json             (written by init/download) preset extras and where the weights came from
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interlcm.choices import DEFAULT_VARIANT, VARIANTS, get_variant
from interlcm.config import SD15, PresetConfig, VisualEncoderConfig, get_preset
from interlcm.files import sha256_file
from interlcm.models.container import InterLCMModels, build_random

INFO_FILE = "interlcm.json"
# Library-format subfolders: folder -> (its config file, whether it holds weights)
MODEL_FOLDERS = {
    "lcm/unet": ("config.json", True),
    "lcm/vae": ("config.json", True),
    "lcm/scheduler": ("scheduler_config.json", False),
    "clip": ("config.json", True),
}
LAYOUT_HELP = (
    "expected WEIGHTS/lcm/{unet,vae,scheduler}, WEIGHTS/clip/, WEIGHTS/visual_encoder_<variant>.pth and "
    "WEIGHTS/spatial_encoder_<variant>.pth; fill it with `interlcm-weights download --out WEIGHTS` "
    "or `interlcm-weights init --preset tiny --out WEIGHTS`"
)


class WeightsError(RuntimeError):
    """A weights folder or checkpoint is missing, incomplete or does not match the model."""


def encoder_paths(root: Path, variant: str) -> tuple[Path, Path]:
    ve, se = get_variant(variant).files
    return root / ve, root / se


# --- state dicts ------------------------------------------------------------------------------


def save_params_ema(module: nn.Module, path: Path) -> None:
    """Write a checkpoint in the release's format, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_torch_save({"params_ema": state}, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_params_ema(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"missing checkpoint {path}: {LAYOUT_HELP}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with foreign objects, truncated download
        raise WeightsError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); download it again") from exc
    if not isinstance(ckpt, Mapping) or "params_ema" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise WeightsError(f"{path} is not a released InterLCM checkpoint: no 'params_ema' key (found {keys})")
    return ckpt["params_ema"]


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load a state dict, naming every missing, unexpected and mis-shaped key in one error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label} keys: {', '.join(items[:3])}{more}")
        raise WeightsError(
            f"{source} does not match the {type(module).__name__} this preset builds: {'; '.join(parts)}. "
            "Is it the right file for this model size and variant?"
        )
    module.load_state_dict(state, strict=True)


# --- init: random weights in the released layout -----------------------------------------------


def init_weights(out: Path, preset: str, seed: int = 0, force: bool = False) -> Path:
    """Write a complete weights folder with seeded random weights for `preset`."""
    from diffusers import LCMScheduler

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise WeightsError(f"{out} already exists and is not empty: choose another --out or pass --force")
    cfg = get_preset(preset)
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=f".{out.name}."))
    try:
        for variant_index, variant in enumerate(VARIANTS):
            # one random SE/VE pair per variant, so variants differ like the released ones do
            models = build_random(cfg, seed + variant_index)
            ve_path, se_path = encoder_paths(tmp, variant)
            save_params_ema(models.visual_encoder, ve_path)
            save_params_ema(models.spatial_encoder, se_path)
            if variant_index == 0:
                models.unet.save_pretrained(tmp / "lcm" / "unet")
                models.vae.save_pretrained(tmp / "lcm" / "vae")
                LCMScheduler(**cfg.scheduler).save_pretrained(tmp / "lcm" / "scheduler")
                models.clip.model.save_pretrained(tmp / "clip")
        write_info(tmp, cfg, origin=f"random, preset {preset}, seed {seed}")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_info(root: Path, cfg: PresetConfig, origin: str) -> None:
    info = {
        "origin": origin,
        "preset": cfg.name,
        "resolution": cfg.resolution,
        "visual_encoder": cfg.to_dict()["visual_encoder"],
        "spatial_encoder": cfg.spatial_encoder,
    }
    (root / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_info(root: Path) -> dict[str, Any]:
    """What init/download recorded; a hand-assembled folder is taken as the released sd15 model."""
    path = root / INFO_FILE
    if not path.is_file():
        return {"origin": f"weights {root}", "preset": "sd15", "resolution": SD15.resolution}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); delete it or re-run interlcm-weights init") from exc


# --- verify --------------------------------------------------------------------------------------


def verify_weights(root: Path, variants: tuple[str, ...] = ("3step",)) -> list[str]:
    """Every problem with a weights folder, one line each (empty list: all good)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root} is not a folder: {LAYOUT_HELP}"]
    problems = []
    for sub, (needs, has_weights) in MODEL_FOLDERS.items():
        if not (root / sub / needs).is_file():
            problems.append(f"missing {root / sub / needs}")
        elif has_weights and not any(p.suffix in (".safetensors", ".bin") for p in (root / sub).iterdir()):
            problems.append(f"no weights (*.safetensors or *.bin) in {root / sub}")
    for variant in variants:
        for path in encoder_paths(root, variant):
            if not path.is_file():
                problems.append(f"missing {path}")
    if problems:
        return problems
    try:
        load_models(root, variants[0])
    except WeightsError as exc:
        problems.append(str(exc))
    problems += _check_recorded_hashes(root)
    return problems


def _check_recorded_hashes(root: Path) -> list[str]:
    """Compare files against checksums.json (written by the download), when present."""
    path = root / "checksums.json"
    if not path.is_file():
        return []
    recorded = json.loads(path.read_text())
    return [
        f"{root / rel} has sha256 {sha256_file(root / rel)[:12]}..., expected {digest[:12]}...: download it again"
        for rel, digest in recorded.items()
        if (root / rel).is_file() and sha256_file(root / rel) != digest
    ]


def weights_identity(root: Path, variant: str) -> str:
    """A short hash over every file the model is loaded from (names and contents)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for sub in ("lcm", "clip")
        for p in (root / sub).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)  # hub caches
    )
    files += list(encoder_paths(root, variant))
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


# --- load ------------------------------------------------------------------------------------------


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping keys (_class_name, _diffusers_version, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_models(root: Path, variant: str = DEFAULT_VARIANT, resolution: int | None = None) -> InterLCMModels:
    """Load InterLCM from a weights folder, with one-line errors for anything that does not fit."""
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionModel

    from interlcm.models.clip import ClipImageEncoder
    from interlcm.models.spatial_encoder import build_spatial_encoder
    from interlcm.models.visual_encoder import VisualEncoder

    root = Path(root)
    ve_path, se_path = encoder_paths(root, variant)
    for sub in MODEL_FOLDERS:
        if not (root / sub).is_dir():
            raise WeightsError(f"missing folder {root / sub}: {LAYOUT_HELP}")
    info = read_info(root)
    _quiet_transformers()
    try:
        unet = UNet2DConditionModel.from_pretrained(root / "lcm", subfolder="unet")
        vae = AutoencoderKL.from_pretrained(root / "lcm", subfolder="vae")
        scheduler = LCMScheduler.from_pretrained(root / "lcm", subfolder="scheduler")
        clip_model, loading = CLIPVisionModel.from_pretrained(root / "clip", output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load the LCM or CLIP from {root}: {first_line}") from exc
    if loading["missing_keys"] or loading.get("mismatched_keys"):
        raise WeightsError(
            f"{root / 'clip'} lacks CLIP vision weights {sorted(loading['missing_keys'])[:3]}: "
            "it must hold openai/clip-vit-base-patch16 (or a CLIPVisionModel save)"
        )
    if unet.config.get("time_cond_proj_dim") is None:
        raise WeightsError(f"{root / 'lcm/unet'} has no time_cond_proj_dim: it is not an LCM UNet")

    ve_dict = dict(info.get("visual_encoder") or SD15.to_dict()["visual_encoder"])
    ve_dict["ch_mult"] = tuple(ve_dict["ch_mult"])
    vision = clip_model.config
    cfg = PresetConfig(
        name=info.get("preset", "sd15"),
        resolution=resolution or info.get("resolution", SD15.resolution),
        clip={k: getattr(vision, k) for k in SD15.clip},
        visual_encoder=VisualEncoderConfig(**ve_dict),
        unet=_public(unet.config),
        vae=_public(vae.config),
        spatial_encoder=dict(info.get("spatial_encoder") or SD15.spatial_encoder),
        scheduler=_public(scheduler.config),
    )
    ve = VisualEncoder(cfg.visual_encoder, cfg.clip_tokens, cfg.clip_width)
    load_state_strict(ve, read_params_ema(ve_path), ve_path)
    se = build_spatial_encoder(cfg.unet, cfg.spatial_encoder)
    load_state_strict(se, read_params_ema(se_path), se_path)
    return InterLCMModels(
        config=cfg,
        clip=ClipImageEncoder.from_model(clip_model),
        visual_encoder=ve,
        spatial_encoder=se,
        unet=unet,
        vae=vae,
        origin=f"{info.get('origin', root)} ({root}, {variant})",
    ).eval()
