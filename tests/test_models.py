"""Component-level checks: released layouts, preprocessing, no dead random layers."""

import pytest
import torch

from interlcm.config import SD15, TINY
from interlcm.models.clip import ClipImageEncoder
from interlcm.models.spatial_encoder import SpatialCondition, SpatialEncoderStep, build_spatial_encoder
from interlcm.models.visual_encoder import VisualEncoder


def test_visual_encoder_released_layout():
    ve = VisualEncoder(SD15.visual_encoder, SD15.clip_tokens, SD15.clip_width)
    keys = list(ve.state_dict())
    # spot checks against the released state dict's order and names
    assert keys[:2] == ["blocks.0.weight", "blocks.0.bias"]
    assert "blocks.1.conv.weight" in keys and "blocks.3.q.weight" in keys and "blocks.3.proj_out.bias" in keys
    assert "blocks.10.conv_out.weight" in keys  # ResBlock 512 -> 256 has the 1x1 shortcut
    assert "blocks.5.conv_out.weight" not in keys  # ResBlock 512 -> 512 has none
    assert keys[-4:] == ["blocks.15.weight", "blocks.15.bias", "blocks.16.weight", "blocks.16.bias"]
    assert sum(p.numel() for p in ve.parameters()) == pytest.approx(13.0e6, rel=0.02)
    out = ve(torch.randn(1, 197, 768))
    assert out.shape == (1, 77, 768)


def test_clip_preprocessing_and_tokens():
    torch.manual_seed(0)
    enc = ClipImageEncoder(TINY.clip).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    pixels = enc.preprocess(image)
    assert pixels.shape == (2, 3, 32, 32)
    # release: no antialias; with antialias a downscale gives different pixels
    enc_aa = ClipImageEncoder(TINY.clip, antialias=True)
    assert not torch.allclose(pixels, enc_aa.preprocess(image), atol=1e-3)
    # a grey image in [-1, 1] maps to CLIP-normalised values
    grey = enc.preprocess(torch.zeros(1, 3, 64, 64))[0, :, 0, 0]
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(grey, expected)
    with torch.no_grad():
        tokens = enc(image)
    assert tokens.shape == (2, TINY.clip_tokens, TINY.clip_width)
    # post layer norm on every token (unit LN weights at init): each token is normalised
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, TINY.clip_tokens), atol=1e-4, rtol=0)


def test_clip_non_square_input_is_resized_on_short_side():
    enc = ClipImageEncoder(TINY.clip)
    assert enc.preprocess(torch.zeros(1, 3, 64, 128)).shape == (1, 3, 32, 32)


def test_spatial_encoder_split_equals_controlnet(tiny_models, lq_photo):
    se = tiny_models.spatial_encoder
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([759.0, 259.0])
    ctx = torch.randn(2, 77, TINY.clip_width)
    with torch.no_grad():
        down, mid = se(z, t, encoder_hidden_states=ctx, controlnet_cond=lq_photo, return_dict=False)
        ours = SpatialEncoderStep(se)(z, t, ctx, SpatialCondition(se)(lq_photo))
    assert len(ours) == 13
    for a, b in zip(ours, [*down, mid]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(r.abs().max() > 0 for r in ours)  # zero convs were randomised


def test_random_presets_have_no_zero_weights(tiny_models):
    for name, module in tiny_models.modules().items():
        for pname, p in module.named_parameters():
            if p.dim() >= 2:
                assert p.detach().any(), f"{name}.{pname} is all zeros"


def test_spatial_encoder_from_unet_config_matches_release_keys():
    from diffusers import ControlNetModel, UNet2DConditionModel

    # what the release does: ControlNetModel.from_unet on a UNet without cond_proj
    unet_cfg = {k: v for k, v in TINY.unet.items() if k != "time_cond_proj_dim"}
    released = ControlNetModel.from_unet(UNet2DConditionModel(**unet_cfg), conditioning_embedding_out_channels=(8, 8, 16, 16))
    ours = build_spatial_encoder(TINY.unet, TINY.spatial_encoder)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in released.state_dict().items()}
