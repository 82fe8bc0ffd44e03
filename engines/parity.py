"""Stage-by-stage comparison of a backend with the torch reference.

Both run the same sampler on the same input and the same noise with a `Trace`;
every intermediate (c_v, residuals, eps per step, latents, image) is compared,
so a failure names the stage where the two first part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interlcm.sampler import Trace


@dataclass(frozen=True)
class StageDiff:
    stage: str
    max_abs: float
    max_rel: float  # max |a - b| / max |b|
    cosine: float
    psnr: float | None = None  # images only, in dB over the [-1, 1] range

    def row(self) -> str:
        psnr = f"{self.psnr:7.2f}" if self.psnr is not None else "      -"
        return f"{self.stage:<22} {self.max_abs:10.3e} {self.max_rel:10.3e} {self.cosine:10.7f} {psnr}"


def compare(stage: str, ours: torch.Tensor, ref: torch.Tensor) -> StageDiff:
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"{stage}: shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
    diff = (a - b).abs()
    scale = b.abs().max().item() or 1.0
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    psnr = None
    if stage in ("decoded", "image"):
        mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).mean().item()
        psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak 2 -> peak^2 = 4
    return StageDiff(stage, diff.max().item(), diff.max().item() / scale, cos, psnr)


def compare_traces(ours: Trace, ref: Trace) -> list[StageDiff]:
    missing = set(ref) - set(ours)
    if missing:
        raise ValueError(f"backend trace lacks stages {sorted(missing)}")
    return [compare(stage, ours[stage], ref[stage]) for stage in ref]


def format_table(rows: list[StageDiff]) -> str:
    head = f"{'stage':<22} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'PSNR dB':>7}"
    return "\n".join([head, "-" * len(head), *(r.row() for r in rows)])
