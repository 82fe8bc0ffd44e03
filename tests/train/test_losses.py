"""Losses and the training config: values by hand, weight loading, overrides."""

from __future__ import annotations

import pytest
import torch

from interlcm.train.config import TrainConfig, apply_overrides
from interlcm.train.losses import (
    LPIPS,
    NLayerDiscriminator,
    PerceptualWeightsError,
    VGG16Features,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
)


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_patchgan_shape_and_layout():
    d = NLayerDiscriminator(channels=64, layers=3)
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 70x70 PatchGAN on 256 px
    # taming's layout: biased first and last convs, bias-free convs followed by BatchNorm
    convs = 3 * 64 * 16 + 64 + (64 * 128 + 128 * 256 + 256 * 512) * 16 + 512 * 16 + 1
    assert sum(p.numel() for p in d.parameters()) == convs + 2 * (128 + 256 + 512)


def test_adaptive_weight_is_the_gradient_norm_ratio():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    rec, g = (3 * x).abs().mean(), (0.5 * x).sum()
    expected = (3 / x.numel()) * x.numel() ** 0.5 / (0.5 * x.numel() ** 0.5 + 1e-4)
    assert adaptive_gan_weight(rec, g, x).item() == pytest.approx(expected, rel=1e-5)


def test_lpips_loads_torchvision_vgg16_layout(tmp_path):
    # torchvision's vgg16().features keys and shapes, random values
    state = {f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}
    assert "features.28.weight" in state and state["features.28.weight"].shape == (512, 512, 3, 3)
    path = tmp_path / "vgg16.pth"
    torch.save({**state, "classifier.0.weight": torch.zeros(1)}, path)  # full vgg16 checkpoints carry a head
    lins = tmp_path / "lpips_vgg.pth"
    torch.save(
        {
            f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), 0.1)
            for i, c in enumerate((64, 128, 256, 512, 512))
        },
        lins,
    )
    lpips = LPIPS()
    lpips.load_weights(path, lins)
    assert lpips.pretrained and torch.equal(lpips.net.features[28].weight, state["features.28.weight"])
    assert torch.all(lpips.lins[4].weight == 0.1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(lpips(x, x) == 0) and torch.all(lpips(x, -x) > 0)
    with pytest.raises(PerceptualWeightsError, match="standard VGG16 widths"):
        LPIPS(channels=(8, 16, 32, 32, 32)).load_weights(path)


def test_config_overrides_and_checks(tmp_path):
    data = apply_overrides(
        {}, ["lr=1e-4", "betas=[0.5, 0.9]", "degradation.task=inpainting", "variant=inpainting"]
    )
    cfg = TrainConfig.from_dict(data)
    assert cfg.lr == 1e-4 and cfg.betas == (0.5, 0.9) and cfg.degradation_config().task == "inpainting"
    assert cfg.model_steps == 1
    with pytest.raises(ValueError, match="unknown training config key 'lrr'"):
        apply_overrides({}, ["lrr=1"])
    with pytest.raises(ValueError, match="max_steps=1.5"):
        apply_overrides({}, ["max_steps=1.5"])
    with pytest.raises(ValueError, match="degradation.task=colorization"):
        TrainConfig(variant="colorization")
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 2e-5\nvariant = "1step"\n[degradation]\nsigma_range = [1.0, 5.0]\n')
    cfg = TrainConfig.from_file(toml, ["max_steps=7"])
    assert (cfg.lr, cfg.max_steps, cfg.degradation_config().sigma_range) == (2e-5, 7, (1.0, 5.0))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
