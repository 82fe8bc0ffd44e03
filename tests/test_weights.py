"""Weights folders: released formats load, mismatches raise named errors."""

import json
import shutil

import pytest
import torch

from interlcm.models.container import build_random
from interlcm.torch_backend import TorchBackend
from interlcm.weights import (
    WeightsError,
    encoder_paths,
    load_models,
    load_state_strict,
    read_params_ema,
    save_params_ema,
    verify_weights,
)


def test_init_then_load_gives_the_same_model(tiny_weights, tiny_models, lq_photo):
    loaded = load_models(tiny_weights, "3step")
    assert "random" in loaded.origin and loaded.config.resolution == tiny_models.config.resolution
    a = TorchBackend(loaded).run("clip", image=lq_photo)["tokens"]
    b = TorchBackend(tiny_models).run("clip", image=lq_photo)["tokens"]
    torch.testing.assert_close(a, b)
    for name in ("visual_encoder", "spatial_encoder", "unet", "vae"):
        ours, theirs = loaded.modules()[name].state_dict(), tiny_models.modules()[name].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_variants_differ(tiny_weights):
    a = read_params_ema(encoder_paths(tiny_weights, "3step")[0])
    b = read_params_ema(encoder_paths(tiny_weights, "1step")[0])
    assert not torch.equal(a["blocks.0.weight"], b["blocks.0.weight"])


def test_released_format_round_trip(tmp_path, tiny_models):
    path = tmp_path / "ve.pth"
    save_params_ema(tiny_models.visual_encoder, path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["params_ema"]
    fresh = build_random(tiny_models.config, seed=5).visual_encoder
    load_state_strict(fresh, read_params_ema(path), path)  # no missing / unexpected keys
    assert torch.equal(fresh.state_dict()["blocks.0.weight"], tiny_models.visual_encoder.state_dict()["blocks.0.weight"])


def test_key_and_shape_mismatch_are_named(tmp_path, tiny_models):
    state = dict(tiny_models.visual_encoder.state_dict())
    state["blocks.99.weight"] = torch.zeros(1)
    del state["blocks.0.bias"]
    state["blocks.1.conv.weight"] = torch.zeros(3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"params_ema": state}, path)
    with pytest.raises(WeightsError) as err:
        load_state_strict(build_random(tiny_models.config).visual_encoder, read_params_ema(path), path)
    msg = str(err.value)
    assert "bad.pth" in msg and "blocks.0.bias" in msg and "blocks.99.weight" in msg and "blocks.1.conv.weight" in msg
    assert "\n" not in msg


def test_not_a_released_checkpoint(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WeightsError, match="params_ema"):
        read_params_ema(path)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        read_params_ema(tmp_path / "junk.pth")


def test_sd15_checkpoint_in_tiny_folder_is_refused(tmp_path, tiny_weights):
    from interlcm.config import SD15
    from interlcm.models.visual_encoder import VisualEncoder

    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    save_params_ema(VisualEncoder(SD15.visual_encoder, SD15.clip_tokens, SD15.clip_width), encoder_paths(folder, "3step")[0])
    with pytest.raises(WeightsError, match="wrong shape"):
        load_models(folder)


def test_verify_names_missing_files(tmp_path, tiny_weights):
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    assert verify_weights(folder) == []
    encoder_paths(folder, "3step")[1].unlink()
    shutil.rmtree(folder / "clip")
    problems = verify_weights(folder)
    assert any("spatial_encoder_3step.pth" in p for p in problems)
    assert any("clip" in p for p in problems)
    assert verify_weights(tmp_path / "nowhere")[0].endswith("interlcm-weights init --preset tiny --out WEIGHTS`")


def test_verify_detects_corruption_against_checksums(tmp_path, tiny_weights):
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    ve = encoder_paths(folder, "3step")[0]
    (folder / "checksums.json").write_text(json.dumps({ve.name: "0" * 64}))
    assert any("download it again" in p for p in verify_weights(folder))


def test_public_clip_checkpoint_keys_load(tmp_path):
    """openai/clip-vit-base-patch16 is a full CLIPModel file: its vision keys must all load."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

    from interlcm.config import TINY

    full = CLIPModel(CLIPConfig(vision_config=TINY.clip, text_config={"hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=32))
    full.save_pretrained(tmp_path / "clip")
    vision, info = CLIPVisionModel.from_pretrained(tmp_path / "clip", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert all(k.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")) for k in info["unexpected_keys"])
    torch.testing.assert_close(vision.post_layernorm.weight, full.vision_model.post_layernorm.weight)


class _Gadget:  # a class a malicious or careless .pth could carry
    pass


def test_a_pickle_is_refused_without_torchs_advice_to_load_it_anyway(tmp_path):
    """Every torch.load of a user's file goes through checkpoint.load_torch_file: one sentence, never
    "Re-running torch.load with weights_only set to False will likely succeed"."""
    from pathlib import Path

    from interlcm.faces.networks import load_network
    from interlcm.train.losses import PerceptualWeightsError, _read_state
    from interlcm.train.trainer import read_checkpoint

    path = tmp_path / "gadget.pth"
    torch.save({"params_ema": {"w": torch.zeros(1)}, "x": _Gadget()}, path)
    messages = []
    for load, error in ((read_params_ema, WeightsError), (lambda p: load_network("parsenet", p), WeightsError),
                        (_read_state, PerceptualWeightsError), (read_checkpoint, ValueError)):
        with pytest.raises(error) as info:
            load(path)
        messages.append(str(info.value))
    for message in messages:
        assert "holds Python objects" in message and "_Gadget" in message and "\n" not in message, message
        assert "weights_only" not in message and "succeed" not in message and "can still be loaded" not in message
    # and no other torch.load of files in the package: each would be a way around this
    package = Path(__file__).parents[1]
    loads = [p for folder in ("interlcm", "export", "engines") for p in (package / folder).rglob("*.py")
             if "torch.load(" in p.read_text() and p.name != "checkpoint.py"]
    assert loads == []
