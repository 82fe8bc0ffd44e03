"""The face networks of the photo pipeline: where their weights live and how they are built.

One entry per network; the component descriptions, the weights folder (init, load,
verify) and the download all read this table. Files sit in `WEIGHTS/facelib/` under
the names facexlib and the release use, each a plain `torch.save`d state dict
(the detectors' keys may carry nn.DataParallel's `module.` prefix, as released).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from interlcm.checkpoint import WeightsError, atomic_torch_save, load_state_strict, load_torch_file
from interlcm.faces.parsenet import ParseNet, ParseStep
from interlcm.faces.retinaface import (
    MOBILENET,
    RESNET50,
    RetinaFaceConfig,
    RetinaFaceNet,
    RetinaFaceStep,
    strip_module_prefix,
)

FOLDER = "facelib"  # subfolder of the weights folder (the release's weights/facelib)
FACEXLIB_RELEASE = "https://github.com/xinntao/facexlib/releases/download"


@dataclass(frozen=True)
class FaceNetwork:
    name: str  # component name
    kind: str  # "detector" or "parser"
    file: str  # file name in WEIGHTS/facelib/
    url: str  # where facexlib downloads it
    make: Callable[[], nn.Module]  # the network with the released keys, random weights
    wrap: Callable[[nn.Module], nn.Module]  # network -> the exported component's module
    config: RetinaFaceConfig | None = None  # detectors: anchors, strides, variances

    def path(self, root: Path) -> Path:
        return Path(root) / FOLDER / self.file


FACE_NETWORKS: dict[str, FaceNetwork] = {
    n.name: n
    for n in (
        FaceNetwork(
            "retinaface_resnet50",
            "detector",
            "detection_Resnet50_Final.pth",
            f"{FACEXLIB_RELEASE}/v0.1.0/detection_Resnet50_Final.pth",
            lambda: RetinaFaceNet(RESNET50),
            RetinaFaceStep,
            RESNET50,
        ),
        FaceNetwork(
            "retinaface_mobile",
            "detector",
            "detection_mobilenet0.25_Final.pth",
            f"{FACEXLIB_RELEASE}/v0.1.0/detection_mobilenet0.25_Final.pth",
            lambda: RetinaFaceNet(MOBILENET),
            RetinaFaceStep,
            MOBILENET,
        ),
        FaceNetwork(
            "parsenet",
            "parser",
            "parsing_parsenet.pth",
            f"{FACEXLIB_RELEASE}/v0.2.2/parsing_parsenet.pth",
            ParseNet,
            ParseStep,
        ),
    )
}


def random_network(name: str, seed: int) -> nn.Module:
    """Seeded random weights, batch-norm statistics included (so every layer is exercised)."""
    torch.manual_seed(seed)
    net = FACE_NETWORKS[name].make()
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            # as trained networks have: positive variances, small means, unit-ish scales
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            nn.init.normal_(m.weight, 1.0, 0.1, generator=gen)
            nn.init.normal_(m.bias, 0.0, 0.1, generator=gen)
    return net.eval().requires_grad_(False)


def save_network(net: nn.Module, path: Path) -> None:
    """Write a state dict as facexlib releases it (plain dict of tensors), atomically."""
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, path)


def load_network(name: str, path: Path) -> nn.Module:
    """The network from a released (or init-written) file; one-line errors for a wrong file."""
    if not path.is_file():
        raise WeightsError(
            f"missing {path}: run `interlcm-weights download` (or `init`) to fill {path.parent}"
        )
    state = load_torch_file(path, "download it again")
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} is not a state dict (found {type(state).__name__}): download it again")
    net = FACE_NETWORKS[name].make()
    load_state_strict(net, strip_module_prefix(dict(state)), path)
    return net.eval().requires_grad_(False)


def face_module(faces: Mapping[str, nn.Module], name: str) -> nn.Module:
    """The component module for face network `name` among a model set's loaded `faces` (InterLCMModels.faces)."""
    net = faces.get(name)
    if net is None:
        raise WeightsError(
            f"no {name} weights loaded ({FOLDER}/{FACE_NETWORKS[name].file} is missing from the weights folder): "
            "run `interlcm-weights download`, or `interlcm-weights init` for random ones"
        )
    return FACE_NETWORKS[name].wrap(net)
