"""Train InterLCM's Visual and Spatial Encoders through the frozen LCM chain (paper section 3.2).

One optimiser step:

1. For each micro-batch: run the sampler's N-step chain (`interlcm.sampler.restore`, the
   same loop inference uses) with gradients, through the torch backend with `grad=True`; the loss on the decoded
   image is L1 + LPIPS (+ lambda * hinge GAN loss once the discriminator has started).
2. Average gradients over processes (torchrun), clip if asked, step Adam and the cosine
   schedule, update the EMA copy of VE and SE.
3. Once the discriminator has started: one hinge step for it on the same images.

Everything random is a function of (seed, step, micro-batch, rank), so a run resumed from a
checkpoint repeats the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from interlcm.checkpoint import WeightsError, atomic_torch_save, load_torch_file, save_params_ema
from interlcm.files import atomic_write_text, check_replaceable, make_folder
from interlcm.imageio import write_image
from interlcm.models.container import InterLCMModels
from interlcm.sampler import SamplerSettings, restore
from interlcm.schedule import inference_steps_for, make_noise, make_schedule
from interlcm.torch_backend import TorchBackend
from interlcm.train.config import TrainConfig
from interlcm.train.data import FaceDataset
from interlcm.train.losses import (
    LPIPS,
    NLayerDiscriminator,
    PerceptualWeightsError,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from interlcm.weights import encoder_paths, load_models, write_info

TRAINABLE = ("visual_encoder", "spatial_encoder")
FROZEN = ("clip", "unet", "vae")
CHECKPOINTED = ("spatial_encoder", "unet", "vae_decoder")  # components recomputed in backward
CHECKPOINT_FORMAT = 1
RUN_MARKER = "interlcm-train.json"  # written into every run folder: marks it as ours, and as used


class EMA:
    """Exponential moving average of whole modules (parameters averaged, buffers copied)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {k: copy.deepcopy(m).eval().requires_grad_(False) for k, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module]) -> None:
        for k, m in modules.items():
            for e, p in zip(self.shadow[k].parameters(), m.parameters()):
                e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)  # e = decay * e + (1 - decay) * p
            for e, b in zip(self.shadow[k].buffers(), m.buffers()):
                e.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {k: m.state_dict() for k, m in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.shadow.items():
            m.load_state_dict(state[k])


def cosine_lambda(max_steps: int, warmup: int, min_ratio: float):  # -> Callable[[int], float]
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Noise seed of one micro-batch: independent streams per (seed, step, micro-batch, rank)."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0] >> 1)


class Trainer:
    """Owns the models, losses, optimisers and bookkeeping of one training run.

    `train_step(micro_batches)` is one optimiser step on given tensors (tests call it on
    a fixed batch); `fit()` runs the configured number of steps over the data folder.
    """

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None):
        self.cfg = cfg
        self.rank, self.world, self.device = _setup_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.step = 0  # completed optimiser steps

        # 1. Models: only VE and SE learn.
        if not cfg.weights:
            raise ValueError(
                "no weights folder: set `weights:` (interlcm-weights init --preset tiny --out DIR)"
            )
        models = load_models(Path(cfg.weights), cfg.variant, cfg.resolution or None)
        self.models = models.to(self.device)
        for name in FROZEN:
            getattr(models, name).eval().requires_grad_(False)
        self.trainable = {name: getattr(models, name).train().requires_grad_(True) for name in TRAINABLE}
        n = inference_steps_for(cfg.model_steps)
        self.settings = SamplerSettings(
            make_schedule(models.config.scheduler, n),
            guidance_scale=cfg.guidance_scale,
            guidance_dim=models.config.guidance_dim,
            colorfix="none",  # the loss sees the decoded image, as in the release
        )
        self.backend = TorchBackend(
            models, self.device, grad=True, checkpointed=CHECKPOINTED if cfg.gradient_checkpointing else ()
        )

        # 2. Losses and the discriminator.
        with torch.random.fork_rng(devices=[]):  # seeded: a resumed run rebuilds the same random parts
            torch.manual_seed(cfg.seed)
            self.lpips = LPIPS(cfg.perceptual_channels).to(self.device)
            self.disc = NLayerDiscriminator(cfg.disc_channels, cfg.disc_layers).to(self.device)
        if cfg.perceptual_weights:
            self.lpips.load_weights(
                Path(cfg.perceptual_weights), Path(cfg.lpips_weights) if cfg.lpips_weights else None
            )
        elif cfg.perceptual_weight > 0 and not cfg.allow_random_perceptual:
            raise PerceptualWeightsError(
                "the perceptual loss needs pretrained VGG16 weights: set perceptual_weights=FILE (torchvision's "
                "vgg16-397923af.pth state dict; optionally lpips_weights=lpips/weights/v0.1/vgg.pth). "
                "A random VGG is a meaningless loss; allow_random_perceptual=true is for tests only"
            )

        # 3. Optimisers, schedules, EMA, precision.
        params = [p for m in self.trainable.values() for p in m.parameters()]
        self.opt_g = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(
            self.opt_g, cosine_lambda(cfg.max_steps, cfg.warmup_steps, cfg.lr_min_ratio)
        )
        d_steps = max(1, cfg.max_steps - cfg.disc_start + 1)  # the critic's cosine runs over its own steps
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(
            self.opt_d, cosine_lambda(d_steps, 0, cfg.lr_min_ratio)
        )
        self.ema = EMA(self.trainable, cfg.ema_decay)
        self.amp_dtype = _amp_dtype(cfg.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.dataset: FaceDataset | None = None
        self.resumed_from: Path | None = None
        if resume is not None:
            self.load_checkpoint(Path(resume))

    # --- one step ---------------------------------------------------------------------------

    @property
    def gan_active(self) -> bool:
        return self.cfg.gan_weight > 0 and self.step + 1 >= self.cfg.disc_start

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward(self, lq: torch.Tensor, micro: int = 0, noise_seed: int | None = None) -> torch.Tensor:
        """The N-step chain with gradients: (B, 3, R, R) LQ -> decoded restoration.

        The chain's noise is drawn from (seed, step, micro-batch, rank) unless `noise_seed` fixes it.
        """
        cfg, mc = self.cfg, self.models.config
        seed = step_seed(cfg.seed, self.step, micro, self.rank) if noise_seed is None else noise_seed
        noise = make_noise(
            seed,
            self.settings.schedule.num_inference_steps,
            lq.shape[0],
            mc.latent_channels,
            (mc.latent_size, mc.latent_size),
            per_sample=True,
        ).to(self.device)  # (N - 1, B, 4, h, w)
        return restore(self.backend, lq, noise, self.settings)

    def train_step(
        self,
        micro_batches: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor],
        noise_seed: int | None = None,
    ) -> dict[str, float]:
        """One optimiser step over micro-batches of {"hq", "lq"} (B, 3, R, R) in [-1, 1].

        `noise_seed` fixes the chain's noise (overfitting a fixed batch); by default it is
        fresh every step, as training needs.
        """
        cfg = self.cfg
        batches = [micro_batches] if isinstance(micro_batches, dict) else list(micro_batches)
        gan = self.gan_active
        logs: dict[str, float] = {"l1": 0.0, "perceptual": 0.0, "loss": 0.0}
        fakes, reals = [], []

        # 1. Generator (VE + SE) through the chain.
        self.opt_g.zero_grad(set_to_none=True)
        self.disc.requires_grad_(False)
        for micro, batch in enumerate(batches):
            hq, lq = batch["hq"].to(self.device), batch["lq"].to(self.device)
            with self._autocast():
                image = self.forward(lq, micro, noise_seed)  # (B, 3, R, R)
                l1 = (image.float() - hq).abs().mean()
                perceptual = self.lpips(image.float(), hq).mean()
                loss = cfg.l1_weight * l1 + cfg.perceptual_weight * perceptual
                if gan:
                    g_loss = hinge_g_loss(self.disc(image))
                    weight = torch.tensor(cfg.gan_weight, device=self.device)
                    if cfg.adaptive_gan_weight:
                        weight = weight * adaptive_gan_weight(loss, g_loss, image)
                    loss = loss + weight * g_loss
                    logs["g_adv"] = logs.get("g_adv", 0.0) + g_loss.item() / len(batches)
                    logs["gan_weight"] = logs.get("gan_weight", 0.0) + weight.item() / len(batches)
            self.scaler.scale(loss / len(batches)).backward()
            logs["l1"] += l1.item() / len(batches)
            logs["perceptual"] += perceptual.item() / len(batches)
            logs["loss"] += loss.item() / len(batches)
            if gan:
                fakes.append(image.detach())
                reals.append(hq)
        logs["grad_norm"] = self._optimizer_step(
            self.opt_g, [p for m in self.trainable.values() for p in m.parameters()]
        )
        self.ema.update(self.trainable)

        # 2. Discriminator, on the images the generator just made.
        if gan:
            self.disc.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            for real, fake in zip(reals, fakes):
                with self._autocast():
                    d_loss = hinge_d_loss(self.disc(real), self.disc(fake))
                self.scaler.scale(d_loss / len(fakes)).backward()
                logs["d_loss"] = logs.get("d_loss", 0.0) + d_loss.item() / len(fakes)
            self._optimizer_step(self.opt_d, list(self.disc.parameters()), clip=False)
        self.scaler.update()

        logs["lr"] = self.sched_g.get_last_lr()[0]
        self.sched_g.step()
        if gan:
            self.sched_d.step()
        self.step += 1
        return logs

    def _optimizer_step(
        self, opt: torch.optim.Optimizer, params: list[nn.Parameter], clip: bool = True
    ) -> float:
        if self.world > 1:
            _all_reduce_mean(params, self.world)
        self.scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            if grads
            else 0.0
        )
        if clip and self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.scaler.step(opt)
        return float(norm)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train to `max_steps`; returns the exported weights folder."""
        cfg = self.cfg
        self._claim_out()
        self._open_dataset()
        batches = self._batches()
        log_path = self.out / "train_log.jsonl"
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=self.rank != 0, desc="train", unit="step")
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            logs = self.train_step([next(batches) for _ in range(cfg.grad_accum)])
            logs["sec_per_step"] = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == 1):
                logs["step"] = self.step
                logs["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                if self.device.type == "cuda":
                    logs["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                _append_json(log_path, logs)
            if self.step % cfg.val_every == 0 or self.step == cfg.max_steps:
                self.validate()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        return self.out / "weights"

    def _claim_out(self) -> None:
        """Refuse an OUT holding other files, or another run unless resuming; then mark it as this run's."""
        if self.rank != 0:
            return
        make_folder(self.out)  # a file, read-only or uncreatable: FilesError, one sentence
        check_replaceable(self.out, RUN_MARKER, "a training run folder", action="write into")
        if self.resumed_from is None:
            done = sorted((self.out / "checkpoints").glob("step_*.pt"))
            if done or (self.out / RUN_MARKER).is_file():
                how = f"continue it with --resume {done[-1]}" if done else "it has no checkpoint to resume"
                raise ValueError(
                    f"{self.out} already holds a training run ({how}): choose a new --out so nothing is overwritten"
                )
        marker = {"config": self.cfg.to_dict(), "resumed_from": str(self.resumed_from or ""), "step": self.step}
        atomic_write_text(self.out / RUN_MARKER, json.dumps(marker, indent=1) + "\n")

    def _open_dataset(self) -> None:
        if self.dataset is not None:
            return
        if not self.cfg.data:
            raise ValueError("no training data: set `data:` to a folder of square HQ face images")
        self.dataset = FaceDataset(
            self.cfg.data,
            self.models.config.resolution,
            self.cfg.degradation_config(),
            self.cfg.seed,
            self.cfg.hflip,
        )
        if self.rank == 0 and self.dataset.skipped:
            shown = "; ".join(reason for _, reason in self.dataset.skipped[:3])
            more = f" (+{len(self.dataset.skipped) - 3} more)" if len(self.dataset.skipped) > 3 else ""
            print(f"note: skipping {len(self.dataset.skipped)} unusable training image(s): {shown}{more}", file=sys.stderr)
        per_batch = self.cfg.batch_size * self.world
        if len(self.dataset) < per_batch:
            raise ValueError(
                f"{self.cfg.data} has {len(self.dataset)} images but one step needs batch_size x processes = "
                f"{per_batch}: lower batch_size or add images"
            )

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This process's micro-batches from the current step on, crossing epochs.

        Epoch e's order is a permutation drawn from (seed, e); micro-batch g of the run
        sits at a fixed place in it, so resuming at step s starts at micro-batch
        s * grad_accum with no state but the step.
        """
        assert self.dataset is not None
        cfg, ds = self.cfg, self.dataset
        per_epoch = len(ds) // (cfg.batch_size * self.world)
        epoch, pos = divmod(self.step * cfg.grad_accum, per_epoch)
        while True:
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(ds)).tolist()
            chunks = [
                order[i * cfg.batch_size * self.world : (i + 1) * cfg.batch_size * self.world]
                for i in range(per_epoch)
            ]
            mine = [c[self.rank * cfg.batch_size : (self.rank + 1) * cfg.batch_size] for c in chunks[pos:]]
            ds.set_epoch(epoch)
            loader = DataLoader(
                ds, batch_sampler=mine, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda"
            )
            yield from loader
            epoch, pos = epoch + 1, 0

    # --- validation and export -----------------------------------------------------------------

    def ema_models(self) -> InterLCMModels:
        """The frozen networks with the EMA encoders: what the exported weights load as."""
        return replace(self.models, **self.ema.shadow)

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Write OUT/val/step_NNNNNN.png: rows of [LQ | EMA restoration | HQ] for fixed images."""
        if self.rank != 0 or self.cfg.val_images < 1 or not self.cfg.data:
            return None
        cfg, mc = self.cfg, self.models.config
        val = FaceDataset(cfg.data, mc.resolution, cfg.degradation_config(), seed=cfg.seed + 1, hflip=False)
        items = [val[i] for i in range(min(cfg.val_images, len(val)))]
        lq = torch.stack([it["lq"] for it in items])
        hq = torch.stack([it["hq"] for it in items])
        noise = make_noise(
            cfg.seed,
            self.settings.schedule.num_inference_steps,
            len(items),
            mc.latent_channels,
            (mc.latent_size, mc.latent_size),
        )
        settings = replace(self.settings, colorfix="wavelet")  # what inference shows a user
        restored = restore(TorchBackend(self.ema_models(), self.device), lq, noise, settings).cpu()
        rows = [torch.cat([a, b, c], dim=2) for a, b, c in zip(lq, restored, hq)]  # each (3, R, 3R)
        return write_image(self.out / "val" / f"step_{self.step:06d}.png", torch.cat(rows, dim=1))

    def export_weights(self, folder: Path | None = None) -> Path:
        """EMA encoders as `{visual,spatial}_encoder_<variant>.pth` ({"params_ema": ...}, the released
        format) in a weights folder that links the frozen parts, so `load_models` reads it as is."""
        folder = Path(folder or self.out / "weights")
        base = Path(self.cfg.weights).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("lcm", "clip"):
            link = folder / sub
            if not link.exists():
                link.symlink_to(base / sub, target_is_directory=True)
        ve_path, se_path = encoder_paths(folder, self.cfg.variant)
        save_params_ema(self.ema.shadow["visual_encoder"], ve_path)
        save_params_ema(self.ema.shadow["spatial_encoder"], se_path)
        write_info(folder, self.models.config, origin=f"interlcm-train step {self.step} from {base}")
        return folder

    # --- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self, path: Path | None = None) -> Path | None:
        if self.rank != 0:
            return None
        path = Path(path or self.out / "checkpoints" / f"step_{self.step:06d}.pt")
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "models": {k: m.state_dict() for k, m in self.trainable.items()},
            "ema": self.ema.state_dict(),
            "discriminator": self.disc.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "data_epoch": self.dataset.epoch if self.dataset is not None else 0,
        }
        atomic_torch_save(state, path)
        self.export_weights()
        self._prune_checkpoints(path.parent)
        return path

    def _prune_checkpoints(self, folder: Path) -> None:
        old = sorted(folder.glob("step_*.pt"))[: -self.cfg.keep_checkpoints or None]
        for p in old if self.cfg.keep_checkpoints > 0 else []:
            p.unlink()

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path)
        saved = state["config"]
        for key in ("weights", "variant", "perceptual_channels", "disc_channels", "disc_layers"):
            if saved.get(key) != self.cfg.to_dict()[key]:
                raise ValueError(
                    f"{path} was trained with {key}={saved.get(key)!r} but the config says {self.cfg.to_dict()[key]!r}"
                )
        for k, m in self.trainable.items():
            m.load_state_dict(state["models"][k])
        self.ema.load_state_dict(state["ema"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.resumed_from = path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, or a ValueError naming what `path` is instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:  # truncated zip, foreign pickle, not a torch file: all mean "unusable"
        state = load_torch_file(path, "resume from an earlier OUT/checkpoints/step_N.pt")
    except WeightsError as exc:
        raise ValueError(str(exc)) from None
    if isinstance(state, dict) and "params_ema" in state:
        raise ValueError(
            f"{path} is an encoder weights file, not a training checkpoint: --resume takes "
            "OUT/checkpoints/step_N.pt (to start from trained weights, point `weights:` at their folder)"
        )
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an interlcm-train checkpoint (format {found!r}): resume from OUT/checkpoints/step_N.pt")
    return state


# --- helpers ------------------------------------------------------------------------------------------


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            return dist.get_rank(), world, torch.device("cuda", local)
        return dist.get_rank(), world, torch.device("cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 0, 1, torch.device(device)


def _all_reduce_mean(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over processes (what DDP does, without its forward hooks: the chain
    calls VE and SE through the component wrappers, never through a DDP module)."""
    handles = []
    for p in params:
        if p.grad is None:  # keep every rank's collective sequence identical
            p.grad = torch.zeros_like(p)
        handles.append(dist.all_reduce(p.grad, async_op=True))
    for h in handles:
        h.wait()
    for p in params:
        p.grad.div_(world)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ValueError(f"mixed_precision={mode} needs a CUDA device (running on {device}); use auto or no")
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _append_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")  # full precision: resume tests compare exactly
