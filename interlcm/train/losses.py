"""Training losses: L1, LPIPS-style VGG16 perceptual distance, hinge GAN with a PatchGAN critic.

The release (sen-mao/InterLCM, `basicsr/models/codeformer_joint_model.py`)
trains with L1 + LPIPS + 0.1 * hinge generator loss. Its VQGAN-style
`calculate_adaptive_weight` is defined but never called, so its GAN weight is
the fixed 0.1; `adaptive_gan_weight` below is that VQGAN formula as an option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from interlcm.checkpoint import WeightsError, load_torch_file

# torchvision's vgg16().features: conv widths per stage and the "M" max-pools between
# stages. Module indices follow from this list, so torchvision's state-dict keys
# (features.0.weight, ..., features.28.bias) load unchanged.
VGG16_STAGES: tuple[int, ...] = (2, 2, 3, 3, 3)  # convs per stage
VGG16_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# LPIPS's input scaling (lpips.pretrained_networks.ScalingLayer), for images in [-1, 1]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class PerceptualWeightsError(RuntimeError):
    """The perceptual network has no pretrained weights, or they do not fit."""


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` layout; returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.

    `channels` shrinks the widths for tests (the `tiny` preset); only the standard
    widths can load real VGG16 weights.
    """

    def __init__(self, channels: Sequence[int] = VGG16_CHANNELS):
        super().__init__()
        if len(channels) != len(VGG16_STAGES):
            raise ValueError(f"VGG16 has {len(VGG16_STAGES)} stages, got channels {tuple(channels)}")
        layers: list[nn.Module] = []
        self.taps: list[int] = []  # index of the ReLU ending each stage
        c_in = 3
        for stage, (n_convs, c_out) in enumerate(zip(VGG16_STAGES, channels)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n_convs):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = c_out
            self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.channels = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
            if i == self.taps[-1]:
                break
        return outs


class LPIPS(nn.Module):
    """LPIPS distance (Zhang et al. 2018) on a VGG16 backbone, images in [-1, 1].

    Per tapped layer: unit-normalise features over channels, square the
    difference, weight channels with the 1x1 `lin{i}` layers, average over
    space; sum over layers. Without LPIPS's trained `lin` weights the channel
    weights are uniform 1/C (the "baseline" VGG distance of the LPIPS paper).
    """

    def __init__(self, channels: Sequence[int] = VGG16_CHANNELS):
        super().__init__()
        self.net = VGG16Features(channels)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        for lin, c in zip(self.lins, channels):
            nn.init.constant_(lin.weight, 1.0 / c)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.pretrained = False  # set by load_weights; the trainer refuses to train without it
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:  # always a fixed metric
        return super().train(False)

    def load_weights(self, vgg_path: Path, lin_path: Path | None = None) -> None:
        """VGG16 backbone from a torchvision state dict (`features.N.*` keys, e.g. `vgg16-397923af.pth`);
        optional LPIPS `lin` layers from the lpips package's `weights/v0.1/vgg.pth` (`linN.model.1.weight`)."""
        vgg = _read_state(vgg_path)
        backbone = {k: v for k, v in vgg.items() if k.startswith("features.")}
        _load_strict(self.net, backbone, vgg_path, "a torchvision vgg16 state dict (features.N.weight keys)")
        if lin_path is not None:
            lins = {
                k.replace(".model.1.", ".").replace("lin", "", 1): v
                for k, v in _read_state(lin_path).items()
                if k.startswith("lin")
            }
            _load_strict(
                self.lins, lins, lin_path, "the lpips package's vgg.pth (lin0.model.1.weight ... lin4)"
            )
        self.pretrained = True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) x 2 -> (B,) distances."""
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, lin in zip(fx, fy, self.lins):
            diff = (_unit(a) - _unit(b)) ** 2  # (B, C, h, w)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _read_state(path: Path) -> Mapping[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsError(f"perceptual weights file {path} does not exist")
    try:
        state = load_torch_file(path, "give the released LPIPS/VGG weights (plain state dicts)")
    except WeightsError as exc:
        raise PerceptualWeightsError(str(exc)) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PerceptualWeightsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, expected: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise PerceptualWeightsError(
            f"{path} does not fit the perceptual network: missing {missing[:3]}, wrong shape {bad[:3]}; "
            f"expected {expected} with the standard VGG16 widths {VGG16_CHANNELS}"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)


# --- adversarial -------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """PatchGAN critic (pix2pix / VQGAN `NLayerDiscriminator` layout): (B, 3, H, W) -> (B, 1, h, w) logits.

    `layers` stride-2 convs (the first without norm), one stride-1 conv, a 1-channel
    output conv; channels double per layer up to 8 * `channels`.
    """

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        seq.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():  # VQGAN's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    at: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN's weight ||d rec / d at|| / ||d g / d at||, clamped to [0, max_weight] and detached.

    VQGAN takes the gradients at the decoder's last weight. Our decoder is frozen,
    so the trainer passes the decoded image (that layer's output) instead: the
    same ratio seen one layer later, and no frozen weight has to track gradients.
    """
    rec_grad = torch.autograd.grad(rec_loss, at, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, at, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
