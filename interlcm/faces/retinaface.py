"""RetinaFace (ResNet-50 and mobilenet0.25), as facexlib and the InterLCM release run it.

Three parts:
- `RetinaFaceNet`: the network, whose state-dict keys are those of facexlib's released
  `detection_Resnet50_Final.pth` / `detection_mobilenet0.25_Final.pth` (`body.*` is the
  backbone cut after its last used stage, `fpn.*`, `ssh1-3.*`, `ClassHead.i`, `BboxHead.i`,
  `LandmarkHead.i`). torchvision is not installable next to our torch, so the ResNet-50
  body is written here with torchvision's key names.
- `RetinaFaceStep`: the exported component: RGB pixels in [0, 255] -> (loc, conf, landmarks)
  per prior box. The release's BGR mean subtraction runs inside the graph.
- `RetinaFaceDetector` (interlcm.faces.detectors): a `Detector` over any backend (`run(component, **tensors)`): resize,
  network, prior boxes, decoding with the variances, confidence threshold and NMS, all as
  torch ops on the backend's device; only the few kept faces go back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interlcm.faces.detect import Detection

# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetinaFaceConfig:
    backbone: str  # "resnet50" or "mobilenet0.25"
    body_channels: tuple[int, int, int]  # channels of the three backbone stages the FPN reads
    channels: int  # FPN / SSH width
    # Anchor side lengths (pixels) per pyramid level and the levels' strides: the release's values.
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)  # centre and size scalings of the box encoding

    @property
    def anchors_per_cell(self) -> int:
        return len(self.min_sizes[0])

    @property
    def leaky(self) -> float:
        # the release's rule: narrow (mobile) heads use LeakyReLU(0.1), wide ones ReLU
        return 0.1 if self.channels <= 64 else 0.0


RESNET50 = RetinaFaceConfig("resnet50", body_channels=(512, 1024, 2048), channels=256)
MOBILENET = RetinaFaceConfig("mobilenet0.25", body_channels=(64, 128, 256), channels=64)

# Mean of the training images, in BGR order (the release feeds BGR pixels minus this mean).
BGR_MEAN = (104.0, 117.0, 123.0)


def num_priors(cfg: RetinaFaceConfig, height: int, width: int) -> int:
    """Prior boxes for an (height, width) input: anchors x cells of every pyramid level."""
    return sum(cfg.anchors_per_cell * math.ceil(height / s) * math.ceil(width / s) for s in cfg.steps)


# --- backbones -----------------------------------------------------------------------------------


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    # keys: 0 conv, 1 batch norm (2 is the parameter-free activation)
    return nn.Sequential(*_conv_bn(cin, cout, kernel, stride), nn.LeakyReLU(leaky))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3), torchvision's key names."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50Body(nn.Module):
    """ResNet-50 up to layer4 (no pooling head); returns layer2-4: strides 8, 16, 32."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)), 1):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer2(self.layer1(x))  # (B, 512, H/8, W/8)
        c3 = self.layer3(c2)  # (B, 1024, H/16, W/16)
        return c2, c3, self.layer4(c3)  # (B, 2048, H/32, W/32)


def _depthwise(cin: int, cout: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    # keys: 0/1 depthwise conv + norm, 3/4 pointwise conv + norm (2 and 5 are activations)
    return nn.Sequential(
        *_conv_bn(cin, cin, 3, stride, groups=cin),
        nn.LeakyReLU(leaky),
        *_conv_bn(cin, cout, 1),
        nn.LeakyReLU(leaky),
    )


class MobileNetBody(nn.Module):
    """MobileNetV1 x0.25 stages 1-3 (no pooling head); strides 8, 16, 32."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn_act(3, 8, 3, 2, leaky=0.1),
            _depthwise(8, 16, 1),
            _depthwise(16, 32, 2),
            _depthwise(32, 32, 1),
            _depthwise(32, 64, 2),
            _depthwise(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_depthwise(64, 128, 2), *(_depthwise(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_depthwise(128, 256, 2), _depthwise(256, 256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.stage1(x)  # (B, 64, H/8, W/8)
        c2 = self.stage2(c1)  # (B, 128, H/16, W/16)
        return c1, c2, self.stage3(c2)  # (B, 256, H/32, W/32)


# --- neck and heads ------------------------------------------------------------------------------


class FPN(nn.Module):
    def __init__(self, cins: tuple[int, int, int], c: int, leaky: float):
        super().__init__()
        self.output1 = _conv_bn_act(cins[0], c, 1, leaky=leaky)
        self.output2 = _conv_bn_act(cins[1], c, 1, leaky=leaky)
        self.output3 = _conv_bn_act(cins[2], c, 1, leaky=leaky)
        self.merge1 = _conv_bn_act(c, c, 3, leaky=leaky)
        self.merge2 = _conv_bn_act(c, c, 3, leaky=leaky)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return p1, p2, p3


class SSH(nn.Module):
    """Context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s), concatenated."""

    def __init__(self, c: int, leaky: float):
        super().__init__()
        self.conv3X3 = nn.Sequential(*_conv_bn(c, c // 2, 3))
        self.conv5X5_1 = _conv_bn_act(c, c // 4, 3, leaky=leaky)
        self.conv5X5_2 = nn.Sequential(*_conv_bn(c // 4, c // 4, 3))
        self.conv7X7_2 = _conv_bn_act(c // 4, c // 4, 3, leaky=leaky)
        self.conv7x7_3 = nn.Sequential(*_conv_bn(c // 4, c // 4, 3))  # lower-case x: the released key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.conv5X5_1(x)
        out = (self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(self.conv7X7_2(mid)))
        return F.relu(torch.cat(out, dim=1))


class _Head(nn.Module):
    """1x1 conv -> (B, cells * anchors, values): one row per prior box, in the priors' order."""

    def __init__(self, c: int, anchors: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(c, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFaceNet(nn.Module):
    """BGR-minus-mean image (B, 3, H, W) -> loc (B, P, 4), conf (B, P, 2) softmaxed, landmarks (B, P, 10)."""

    def __init__(self, cfg: RetinaFaceConfig):
        super().__init__()
        self.cfg = cfg
        self.body = ResNet50Body() if cfg.backbone == "resnet50" else MobileNetBody()
        c, a = cfg.channels, cfg.anchors_per_cell
        self.fpn = FPN(cfg.body_channels, c, cfg.leaky)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(c, cfg.leaky) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(c, a, 2) for _ in cfg.steps)
        self.BboxHead = nn.ModuleList(_Head(c, a, 4) for _ in cfg.steps)
        self.LandmarkHead = nn.ModuleList(_Head(c, a, 10) for _ in cfg.steps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.fpn(self.body(x))
        feats = (self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2]))
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landmarks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, conf.softmax(dim=-1), landmarks


class RetinaFaceStep(nn.Module):
    """The exported component: RGB pixels (B, 3, H, W) in [0, 255] -> the network's outputs."""

    def __init__(self, net: RetinaFaceNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(pixels.flip(1) - self.mean)  # RGB -> BGR, as the release reads with OpenCV


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released files were saved from nn.DataParallel: drop its `module.` prefix, as facexlib does."""
    return {k.removeprefix("module."): v for k, v in state.items()}


# --- decoding (torch, on any device) ----------------------------------------------------------------


def prior_boxes(
    cfg: RetinaFaceConfig, height: int, width: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(P, 4) anchors as (cx, cy, w, h), relative to the image; level, row, column, anchor order."""
    levels = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) * step / height
        cx = (torch.arange(cols, device=device, dtype=torch.float32) + 0.5) * step / width
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (rows, cols)
        wh = torch.tensor([[s / width, s / height] for s in sizes], device=device)  # (anchors, 2)
        centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(rows, cols, len(sizes), 2)
        levels.append(torch.cat([centres, wh.expand(rows, cols, -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]) -> torch.Tensor:
    """(..., P, 4) offsets -> (..., P, 4) boxes x0, y0, x1, y1 relative to the image."""
    centre = priors[..., :2] + loc[..., :2] * variance[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variance[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]) -> torch.Tensor:
    """(..., P, 10) offsets -> (..., P, 5, 2) points x, y relative to the image."""
    offsets = pre.unflatten(-1, (5, 2))
    return priors[..., None, :2] + offsets * variance[0] * priors[..., None, 2:]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) corner boxes -> (N, M) intersection over union."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, best first (torchvision's rule).

    A box is dropped when its IoU with a kept, better-scoring box is above the threshold.
    Runs on the boxes' device: one (K, K) overlap matrix, then K vector steps in score
    order that never read a value back to the host.
    """
    order = scores.argsort(descending=True, stable=True)
    sorted_boxes = boxes[order]
    # suppresses[i, j]: box i is better than box j and overlaps it
    suppresses = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for i in range(len(order)):  # box i's fate is final here: only better boxes can drop it
        keep &= ~(suppresses[i] & keep[i])
    return order[keep]


@dataclass(frozen=True)
class RawDetections:
    """Network outputs for one photo, with the scale back to the photo's pixels."""

    loc: torch.Tensor  # (P, 4)
    conf: torch.Tensor  # (P, 2) softmax: background, face
    landmarks: torch.Tensor  # (P, 10)
    size: tuple[int, int]  # (height, width) of the network input
    scale: float  # network-input pixels per photo pixel


def decode(raw: RawDetections, cfg: RetinaFaceConfig, options: DetectOptions) -> list[Detection]:
    """Boxes, landmarks and scores above the threshold, NMS-filtered, in photo pixels, best first."""
    height, width = raw.size
    scores = raw.conf[:, 1]
    hit = scores > options.conf_threshold
    if int(hit.sum()) > options.top_k:  # the (K, K) overlap matrix stays small
        hit &= scores >= scores[hit].topk(options.top_k).values[-1]
    priors = prior_boxes(cfg, height, width, raw.loc.device)[hit]
    image_size = torch.tensor([width, height], dtype=torch.float32, device=raw.loc.device)
    boxes = decode_boxes(raw.loc[hit].float(), priors, cfg.variance) * image_size.repeat(2) / raw.scale
    points = decode_landmarks(raw.landmarks[hit].float(), priors, cfg.variance) * image_size / raw.scale
    keep = nms(boxes, scores[hit], options.nms_threshold)
    boxes, points, kept = (t[keep].cpu().numpy().astype(np.float32) for t in (boxes, points, scores[hit]))
    return [Detection(box=b, landmarks=p, score=float(s)) for b, p, s in zip(boxes, points, kept)]


# --- the detector ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectOptions:
    conf_threshold: float = 0.8  # the release's RetinaFace default
    nms_threshold: float = 0.4
    # The release enlarges a photo whose short side is under 512 (FaceRestoreHelper.read_image),
    # then runs detection with `resize=640`, which enlarges (never shrinks) to a 640 short side.
    # Both steps are bilinear; they are applied in that order so the network sees the same pixels.
    min_short_side: int = 512
    detect_short_side: int = 640
    # Candidates kept for NMS, best first: RetinaFace's own test script uses 5000. Only random
    # weights come near it; it bounds the (K, K) overlap matrix NMS builds.
    top_k: int = 5000


def detection_sizes(height: int, width: int, options: DetectOptions) -> tuple[list[tuple[int, int]], float]:
    """The release's successive resizes of an (height, width) photo before detection, and the
    overall scale it divides the detections by (the product of its factors, not of the rounded sizes)."""
    sizes, total = [], 1.0
    if min(height, width) < options.min_short_side:  # cv2.resize(fx=f, fy=f): output size rounded
        f = options.min_short_side / min(height, width)
        height, width = round(height * f), round(width * f)
        sizes.append((height, width))
        total *= f
    scale = max(1.0, options.detect_short_side / min(height, width))  # "always scale up"
    if scale > 1:  # int() truncation, as the release computes the target size
        sizes.append((int(height * scale), int(width * scale)))
        total *= scale
    return sizes, total
