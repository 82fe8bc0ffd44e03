"""Checkpoint files: atomic torch.save, strict state-dict loading, and the error both raise.

A leaf below the model builders and the weights folder (interlcm.weights), so the face networks,
the upsampler and training write and read checkpoints without importing the weights folder's code.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from interlcm.files import FilesError, atomic_open


class WeightsError(RuntimeError):
    """A weights folder or checkpoint is missing, incomplete or does not match the model."""


def load_torch_file(path: Path, fix: str) -> Any:
    """`torch.load` of a file a user gave (weights, checkpoints), tensors only; WeightsError in one sentence
    ending in `fix` (e.g. "download it again") if it cannot be read.

    A file that holds Python objects besides tensors (a pickle) is refused without relaying torch's
    advice to load it with `weights_only=False`: loading such a file can run any code it carries.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: never relayed
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise WeightsError(f"cannot read checkpoint {path} (not a file of tensors: damaged, or not a torch "
                               f"checkpoint): {fix}") from None
        raise WeightsError(
            f"{path} holds Python objects ({found.group(1)}) besides tensors, which interlcm never loads "
            f"(they can run code): {fix}"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, unreadable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"cannot read checkpoint {path} ({type(exc).__name__}: {first}): {fix}") from None


def save_params_ema(module: nn.Module, path: Path) -> None:
    """Write a checkpoint in the release's format, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_torch_save({"params_ema": state}, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically; a failed write (a full disk ...) is one sentence (FilesError / DiskFull).

    torch's writer swallows the OS's error and fails later with "enforce fail ... unexpected pos", so
    it writes through a file object that keeps the first OSError, which is raised instead.
    """
    path = Path(path)
    with atomic_open(path) as f:
        sink = _KeepWriteError(f)
        try:
            torch.save(obj, sink)
        except RuntimeError as exc:
            if sink.error is not None:
                raise sink.error from None  # atomic_open: "cannot write PATH: no space left on the device: ..."
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FilesError(f"cannot write {path}: torch.save failed ({first}); check free space and permissions") from None


class _KeepWriteError:
    """A binary file whose first failed write is kept (torch.save writes through `write`)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


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
