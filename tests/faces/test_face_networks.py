"""The face networks keep facexlib's released key names; init writes them, load_models reads them."""

from __future__ import annotations

import pytest
import torch

from interlcm.checkpoint import WeightsError
from interlcm.faces.networks import FACE_NETWORKS, load_network, random_network, save_network
from interlcm.faces.retinaface import RetinaFaceStep, num_priors

# Keys read off facexlib's modules (retinaface.py with torchvision's resnet50 behind an
# IntermediateLayerGetter, retinaface_net.py, parsing/parsenet.py): a sample from every part,
# and the sizes of the released files' state dicts (entries, parameters + buffers).
RELEASED_KEYS = {
    "retinaface_resnet50": (
        "body.conv1.weight",
        "body.bn1.num_batches_tracked",
        "body.layer1.0.downsample.0.weight",
        "body.layer3.5.bn3.running_var",
        "body.layer4.2.conv3.weight",
        "fpn.output1.0.weight",
        "fpn.merge2.1.running_mean",
        "ssh1.conv3X3.0.weight",
        "ssh3.conv7x7_3.1.bias",
        "ClassHead.0.conv1x1.weight",
        "BboxHead.2.conv1x1.bias",
        "LandmarkHead.1.conv1x1.weight",
    ),
    "retinaface_mobile": (
        "body.stage1.0.0.weight",
        "body.stage1.0.1.running_var",
        "body.stage1.5.4.bias",
        "body.stage2.5.3.weight",
        "body.stage3.1.4.num_batches_tracked",
        "fpn.output3.0.weight",
        "ssh2.conv5X5_1.1.weight",
        "ssh2.conv7X7_2.0.weight",
        "LandmarkHead.2.conv1x1.bias",
    ),
    "parsenet": (
        "encoder.0.conv2d.weight",
        "encoder.0.conv2d.bias",
        "encoder.1.shortcut_func.conv2d.weight",
        "encoder.1.conv1.norm.norm.running_mean",
        "encoder.4.conv2.conv2d.weight",
        "body.9.conv2.norm.norm.weight",
        "decoder.3.shortcut_func.conv2d.bias",
        "out_img_conv.conv2d.weight",
        "out_mask_conv.conv2d.bias",
    ),
}
# (state-dict entries, million values): ResNet-50 27.3 M (the 104 MB release file), mobile0.25
# 0.43 M (1.7 MB), ParseNet 21.3 M (85 MB)
SIZES = {"retinaface_resnet50": (456, 27.35), "retinaface_mobile": (300, 0.43), "parsenet": (238, 21.32)}
ABSENT = ("body.fc.weight", "body.avgpool", "body.stage1.0.2", "ssh1.conv3X3.2", "body.0.conv1.weight")


@pytest.mark.parametrize("name", list(FACE_NETWORKS))
def test_released_key_layout(name):
    state = FACE_NETWORKS[name].make().state_dict()
    missing = [k for k in RELEASED_KEYS[name] if k not in state]
    assert not missing, missing
    assert not [k for k in state if k.startswith(ABSENT)]  # no classifier head, no parameter-free slots
    entries, millions = SIZES[name]
    assert len(state) == entries
    assert sum(v.numel() for v in state.values()) / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize("name", list(FACE_NETWORKS))
def test_released_format_loads_strictly(name, tmp_path):
    """A file as released (detectors saved from nn.DataParallel: `module.` prefix) loads strictly."""
    net = random_network(name, seed=3)
    state = net.state_dict()
    if FACE_NETWORKS[name].kind == "detector":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / FACE_NETWORKS[name].file
    torch.save(state, path)
    loaded = load_network(name, path)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_wrong_keys_are_named(tmp_path):
    state = random_network("retinaface_mobile", seed=3).state_dict()
    state["extra.weight"] = state.pop("fpn.output1.0.weight")
    path = tmp_path / "detection_mobilenet0.25_Final.pth"
    torch.save(state, path)
    with pytest.raises(
        WeightsError, match=r"1 missing keys: fpn\.output1\.0\.weight; 1 unexpected keys: extra\.weight"
    ):
        load_network("retinaface_mobile", path)


def test_unreadable_or_foreign_files(tmp_path):
    path = tmp_path / "parsing_parsenet.pth"
    with pytest.raises(WeightsError, match="missing .*parsing_parsenet.pth: run `interlcm-weights download`"):
        load_network("parsenet", path)
    path.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="cannot read .*download it again"):
        load_network("parsenet", path)
    torch.save([1, 2], path)
    with pytest.raises(WeightsError, match="is not a state dict"):
        load_network("parsenet", path)


@pytest.mark.parametrize(
    ("name", "size"),
    [("retinaface_resnet50", (97, 130)), ("retinaface_mobile", (64, 64)), ("retinaface_mobile", (97, 130))],
)
def test_detector_outputs_one_row_per_prior(name, size):
    step = RetinaFaceStep(random_network(name, seed=0))
    with torch.inference_mode():
        loc, conf, landmarks = step(torch.rand(2, 3, *size) * 255)
    p = num_priors(FACE_NETWORKS[name].config, *size)
    assert (loc.shape, conf.shape, landmarks.shape) == ((2, p, 4), (2, p, 2), (2, p, 10))
    torch.testing.assert_close(conf.sum(-1), torch.ones(2, p))  # softmax over background / face


def test_init_writes_and_load_models_reads_face_networks(tiny_weights):
    from interlcm.weights import load_models, verify_weights

    for name, net in FACE_NETWORKS.items():
        assert net.path(tiny_weights).is_file(), name
    models = load_models(tiny_weights)
    assert sorted(models.faces) == sorted(FACE_NETWORKS)
    # the random weights init wrote are the seeded ones, bit for bit
    for index, name in enumerate(FACE_NETWORKS):
        want = random_network(name, 0 * 1000 + 10 + index).state_dict()
        got = models.faces[name].state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert verify_weights(tiny_weights) == []


def test_face_weights_are_optional_and_named_when_missing(tiny_weights, tmp_path):
    import shutil

    from interlcm.components import get_component
    from interlcm.weights import load_models

    folder = tmp_path / "w"
    shutil.copytree(tiny_weights, folder)
    FACE_NETWORKS["parsenet"].path(folder).unlink()
    models = load_models(folder)
    assert "parsenet" not in models.faces and "retinaface_mobile" in models.faces
    with pytest.raises(
        WeightsError, match=r"no parsenet weights loaded \(facelib/parsing_parsenet\.pth is missing"
    ):
        get_component("parsenet").build(models)


def test_save_network_writes_a_plain_state_dict(tmp_path):
    net = random_network("retinaface_mobile", seed=1)
    path = tmp_path / "facelib" / "detection_mobilenet0.25_Final.pth"
    save_network(net, path)
    state = torch.load(path, weights_only=True)
    assert isinstance(state, dict) and set(state) == set(net.state_dict())


def test_step_feeds_bgr_minus_the_release_mean():
    """The component takes RGB pixels; the release feeds OpenCV's BGR minus (104, 117, 123)."""
    net = random_network("retinaface_mobile", seed=0)
    pixels = torch.rand(1, 3, 64, 64) * 255
    bgr = pixels[:, [2, 1, 0]] - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    with torch.inference_mode():
        for got, want in zip(RetinaFaceStep(net)(pixels), net(bgr)):
            torch.testing.assert_close(got, want)
