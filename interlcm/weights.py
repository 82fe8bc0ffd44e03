"""The weights folder: write it (random presets), check it, load it.

```
WEIGHTS/
  lcm/                      diffusers folder: unet/, vae/, scheduler/
  clip/                     transformers CLIPVisionModel folder (config.json + weights)
  visual_encoder_3step.pth  {"params_ema": state_dict}, released layout
  spatial_encoder_3step.pth {"params_ema": state_dict}, diffusers ControlNet keys
  (optional) *_1step.pth, *_colorization.pth, *_inpainting.pth
  facelib/                  (optional) whole-photo mode's face networks, facexlib's files and key names:
    detection_Resnet50_Final.pth       RetinaFace ResNet-50, plain state dict (keys may carry `module.`)
    detection_mobilenet0.25_Final.pth  RetinaFace mobilenet0.25, the fast detector
    parsing_parsenet.pth               ParseNet face parsing (paste-back mask)
  (optional) realesrgan/RealESRGAN_x2plus.pth  {"params_ema": state_dict}: the background/face upsampler
  interlcm.json             (written by init/download) preset extras and where the weights came from
```

The face networks have one size for every preset (they work on photos, not on the
model's crops); `init` writes random ones, `download` fetches facexlib's releases.
Their table is `interlcm.faces.networks.FACE_NETWORKS`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from interlcm.checkpoint import WeightsError, load_state_strict, load_torch_file, save_params_ema
from interlcm.choices import DEFAULT_VARIANT, VARIANTS, get_variant
from interlcm.config import PRESETS, SD15, PresetConfig, VisualEncoderConfig, get_preset, get_upsampler
from interlcm.faces.networks import FACE_NETWORKS, load_network, random_network, save_network
from interlcm.faces.networks import FOLDER as FACE_FOLDER
from interlcm.files import (
    DiskFull,
    FilesError,
    atomic_write_text,
    check_replaceable,
    describe_os_error,
    library_errors,
    replace_folder,
    sha256_file,
)
from interlcm.files import staging_folder as _staging_folder
from interlcm.identity import WeightsIdentity
from interlcm.models.clip import ClipImageEncoder
from interlcm.models.container import InterLCMModels, ModelSource, random_source
from interlcm.models.rrdbnet import RRDBNet, UpsamplerModels, build_random_rrdbnet
from interlcm.models.spatial_encoder import build_spatial_encoder
from interlcm.models.visual_encoder import VisualEncoder

INFO_FILE = "interlcm.json"
REALESRGAN_FILE = "realesrgan/RealESRGAN_x2plus.pth"  # the release's path under its weights folder
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


def check_identity(recorded: WeightsIdentity, *, weights: Path | None = None, variant: str | None = None, what: str) -> None:
    """Refuse (WeightsError, one sentence) to use `what` (made from `recorded`) with other weights or encoders."""
    if variant is not None and variant != recorded.variant:
        chosen = get_variant(variant)
        raise WeightsError(
            f"{what} was exported from the {recorded.variant} encoders ({recorded.steps}-step InterLCM) but "
            f"the {chosen.name} encoders ({chosen.steps}-step) were asked for: use --variant {recorded.variant} "
            f"(or --steps {recorded.steps}), or export those (`interlcm-export --variant {chosen.name}`)"
        )
    if weights is not None:
        given = folder_identity(weights, recorded.variant)
        if not given.same_weights(recorded):
            raise WeightsError(
                f"{what} was made from {recorded.describe()}, not from --weights {weights} ({given.describe()}): "
                "drop --weights, or export those weights first (`interlcm-export --weights ...`)"
            )


def encoder_paths(root: Path, variant: str) -> tuple[Path, Path]:
    ve, se = get_variant(variant).files
    return root / ve, root / se


# --- state dicts ------------------------------------------------------------------------------


def read_params_ema(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"missing checkpoint {path}: {LAYOUT_HELP}")
    ckpt = load_torch_file(path, "download it again")
    if not isinstance(ckpt, Mapping) or "params_ema" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise WeightsError(f"{path} is not a released InterLCM checkpoint: no 'params_ema' key (found {keys})")
    return ckpt["params_ema"]


# --- init: random weights in the released layout -----------------------------------------------


def init_weights(out: Path, preset: str, seed: int = 0, force: bool = False) -> Path:
    """Write a complete weights folder with seeded random weights for `preset` (face networks and
    the upsampler included).

    It is written in a temporary folder beside OUT and renamed into place; `force` replaces OUT
    only if it is empty or a weights folder (holds INFO_FILE).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"--out {out} is a file, not a folder: choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise WeightsError(f"{out} already exists and is not empty: choose another --out or pass --force")
    cfg = get_preset(preset)
    try:
        check_replaceable(out, INFO_FILE, "a weights folder")  # before minutes of work, and again at the end
        with _staging_folder(out) as tmp, library_errors(f"cannot write the weights folder {out}", SafetensorError):
            _write_random(tmp, cfg, preset, seed)
            replace_folder(tmp, out, INFO_FILE, "a weights folder")
    except DiskFull:  # the sentence names the temporary folder's file: name OUT instead
        raise WeightsError(describe_os_error(OSError(errno.ENOSPC, "full"), f"cannot write the weights folder {out}")) from None
    except FilesError as exc:
        raise WeightsError(str(exc)) from None
    return out


def _write_random(tmp: Path, cfg: PresetConfig, preset: str, seed: int) -> None:
    for variant_index, variant in enumerate(VARIANTS):
        # one random SE/VE pair per variant, so variants differ like the released ones do; each network
        # is made when saved and dropped after its variant (sd15: never five networks at once, nor four UNets)
        models = random_source(cfg, seed + variant_index)
        ve_path, se_path = encoder_paths(tmp, variant)
        save_params_ema(models.visual_encoder, ve_path)
        save_params_ema(models.spatial_encoder, se_path)
        if variant_index == 0:
            models.unet.save_pretrained(tmp / "lcm" / "unet")
            models.vae.save_pretrained(tmp / "lcm" / "vae")
            LCMScheduler(**cfg.scheduler).save_pretrained(tmp / "lcm" / "scheduler")
            models.clip.model.save_pretrained(tmp / "clip")
            save_params_ema(build_random_rrdbnet(get_upsampler(cfg.name), seed), tmp / REALESRGAN_FILE)
        models.release()
    for index, (name, face) in enumerate(FACE_NETWORKS.items()):
        save_network(random_network(name, seed * 1000 + 10 + index), face.path(tmp))
    write_info(tmp, cfg, origin=f"random, preset {preset}, seed {seed}")


def write_info(root: Path, cfg: PresetConfig, origin: str) -> None:
    info = {
        "origin": origin,
        "preset": cfg.name,
        "resolution": cfg.resolution,
        "visual_encoder": cfg.to_dict()["visual_encoder"],
        "spatial_encoder": cfg.spatial_encoder,
    }
    atomic_write_text(root / INFO_FILE, json.dumps(info, indent=2) + "\n")


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


def weights_digest(root: Path, variant: str) -> str:
    """A short hash over every file the model is loaded from (names and contents)."""
    h = hashlib.sha256()
    files = sorted(
        p
        for sub in ("lcm", "clip")
        for p in (root / sub).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)  # hub caches
    )
    files += list(encoder_paths(root, variant))
    files += sorted(p for p in (root / FACE_FOLDER).glob("*.pth") if p.is_file())  # face networks, when present
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def folder_identity(root: Path, variant: str) -> WeightsIdentity:
    """The identity of a weights folder's `variant`: its preset and a hash over every file loaded."""
    return WeightsIdentity("folder", read_info(Path(root)).get("preset", SD15.name), variant,
                           digest=weights_digest(root, variant))


# --- load ------------------------------------------------------------------------------------------


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping keys (_class_name, _diffusers_version, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable (truncated, bad header), or None: reads only its header.

    Layout: 8-byte little-endian header length N, N bytes of JSON {name: {data_offsets: [b, e]}},
    then the data; the last tensor's end must be exactly the file's end.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            return f"truncated or not a safetensors file ({size} bytes, header claims {max(n, 0)})"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "not a safetensors file (its header is not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    if want != size:
        return f"truncated ({size} bytes, its header describes {want})"
    return None


def _preset_mismatch(cfg: PresetConfig) -> str | None:
    """The first architecture setting of the files that differs from their recorded preset's, if any."""
    ref = PRESETS.get(cfg.name)
    if ref is None:
        return None
    ref_dict, ours = ref.to_dict(), cfg.to_dict()
    for part in ("clip", "visual_encoder", "unet", "vae"):
        for key, want in ref_dict[part].items():
            have = ours[part].get(key, want)
            if json.dumps(have) != json.dumps(want):  # tuples and lists compare equal through JSON
                return f"{part} {key} {have} in the files, {want} in {cfg.name}"
    return None


def _quiet_transformers() -> None:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_models(root: Path, variant: str = DEFAULT_VARIANT, resolution: int | None = None) -> InterLCMModels:
    """Load InterLCM from a weights folder, with one-line errors for anything that does not fit."""
    return folder_source(root, variant, resolution).load_all()


def folder_source(root: Path, variant: str = DEFAULT_VARIANT, resolution: int | None = None) -> ModelSource:
    """A weights folder's networks, each loaded when first used (`load_models` loads them all).

    The configuration is read and checked here, from the config files alone (no weights read):
    a folder of the wrong size or kind fails before any network is loaded.
    """
    root = Path(root)
    ve_path, se_path = encoder_paths(root, variant)
    for sub in MODEL_FOLDERS:
        if not (root / sub).is_dir():
            raise WeightsError(f"missing folder {root / sub}: {LAYOUT_HELP}")
    info = read_info(root)
    for sub, (_, has_weights) in MODEL_FOLDERS.items():
        for path in sorted((root / sub).glob("*.safetensors")) if has_weights else ():
            problem = safetensors_problem(path)
            if problem:
                raise WeightsError(f"{path} is {problem}: download it again (or re-create the folder)")
    _quiet_transformers()
    with _lcm_or_clip_errors(root):
        with torch.device("meta"):  # the configs as the loaded models hold them (defaults filled), no weights
            unet_config = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "lcm", subfolder="unet")).config
            vae_config = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "lcm", subfolder="vae")).config
        scheduler = LCMScheduler.from_pretrained(root / "lcm", subfolder="scheduler")
        vision = CLIPVisionConfig.from_pretrained(root / "clip")
    if unet_config.get("time_cond_proj_dim") is None:
        raise WeightsError(f"{root / 'lcm/unet'} has no time_cond_proj_dim: it is not an LCM UNet")

    ve_dict = dict(info.get("visual_encoder") or SD15.to_dict()["visual_encoder"])
    ve_dict["ch_mult"] = tuple(ve_dict["ch_mult"])
    cfg = PresetConfig(
        name=info.get("preset", "sd15"),
        resolution=resolution or info.get("resolution", SD15.resolution),
        clip={k: getattr(vision, k) for k in SD15.clip},
        visual_encoder=VisualEncoderConfig(**ve_dict),
        unet=_public(unet_config),
        vae=_public(vae_config),
        spatial_encoder=dict(info.get("spatial_encoder") or SD15.spatial_encoder),
        scheduler=_public(scheduler.config),
    )
    mismatch = _preset_mismatch(cfg)
    if mismatch:
        raise WeightsError(
            f"{root / INFO_FILE} says preset {cfg.name!r} but the files are another size ({mismatch}): "
            "fix its \"preset\" or re-create the folder with `interlcm-weights init` / `download`"
        )

    def unet() -> nn.Module:
        with _lcm_or_clip_errors(root):
            return UNet2DConditionModel.from_pretrained(root / "lcm", subfolder="unet")

    def vae() -> nn.Module:
        with _lcm_or_clip_errors(root):
            return AutoencoderKL.from_pretrained(root / "lcm", subfolder="vae")

    def clip() -> nn.Module:
        with _lcm_or_clip_errors(root):
            clip_model, loading = CLIPVisionModel.from_pretrained(root / "clip", output_loading_info=True)
        if loading["missing_keys"] or loading.get("mismatched_keys"):
            raise WeightsError(
                f"{root / 'clip'} lacks CLIP vision weights {sorted(loading['missing_keys'])[:3]}: "
                "it must hold openai/clip-vit-base-patch16 (or a CLIPVisionModel save)"
            )
        return ClipImageEncoder.from_model(clip_model)

    def encoder(make: Callable[[], nn.Module], path: Path) -> Callable[[], nn.Module]:
        def load() -> nn.Module:
            module = make()
            load_state_strict(module, read_params_ema(path), path)
            return module

        return load

    makers: dict[str, Callable[[], nn.Module]] = {
        "clip": clip,
        "visual_encoder": encoder(lambda: VisualEncoder(cfg.visual_encoder, cfg.clip_tokens, cfg.clip_width), ve_path),
        "spatial_encoder": encoder(lambda: build_spatial_encoder(cfg.unet, cfg.spatial_encoder), se_path),
        "unet": unet,
        "vae": vae,
    }
    for name, face in FACE_NETWORKS.items():
        if face.path(root).is_file():
            makers[name] = partial(load_network, name, face.path(root))
    return ModelSource(cfg, makers, f"{info.get('origin', root)} ({root}, {variant})")


@contextlib.contextmanager
def _lcm_or_clip_errors(root: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load the LCM or CLIP from {root}: {first_line}") from exc


def load_upsampler(root: Path, cfg: PresetConfig) -> UpsamplerModels:
    """Real-ESRGAN from WEIGHTS/realesrgan/, sized for the folder's preset (the release: x2plus)."""
    path = Path(root) / REALESRGAN_FILE
    if not path.is_file():
        raise WeightsError(
            f"missing {path}: the background upsampler needs it; run `interlcm-weights download --realesrgan "
            f"--out {root}` (or `interlcm-weights init`), or drop --bg-upsampler / --face-upsample"
        )
    net = RRDBNet(get_upsampler(read_info(Path(root)).get("preset", cfg.name)))
    load_state_strict(net, read_params_ema(path), path)
    return UpsamplerModels(cfg, net, f"{path} (sha256 {sha256_file(path)[:12]})").eval()
