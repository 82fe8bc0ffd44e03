"""Weights folders: --force replaces only our folders, temporaries never pile up, the umask is
honoured, verify checks the recorded preset and the safetensors files, seeds are validated."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from torch import nn

from interlcm import files, weights
from interlcm.checkpoint import WeightsError, save_params_ema
from interlcm.cli.weights import main


@pytest.fixture
def quick_init(monkeypatch):
    """init with a two-file stand-in for the model files (the folder logic is what is tested)."""

    def write(tmp, cfg, preset, seed):
        save_params_ema(nn.Linear(2, 2), tmp / "visual_encoder_3step.pth")
        weights.write_info(tmp, cfg, origin=f"random, preset {preset}, seed {seed}")

    monkeypatch.setattr(weights, "_write_random", write)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_force_replaces_only_weights_folders(tmp_path, quick_init):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"jpg")
    result = invoke("init", "--out", photos, "--force")
    assert result.exit_code == 1 and "refusing to replace --out" in result.output and "not a weights folder" in result.output
    assert [p.name for p in photos.iterdir()] == ["holiday.jpg"]

    ours = tmp_path / "w"
    assert invoke("init", "--out", ours).exit_code == 0
    (ours / "stale.txt").write_text("from an older init")
    assert invoke("init", "--out", ours, "--force").exit_code == 0  # ours (interlcm.json): replaced
    assert sorted(p.name for p in ours.iterdir()) == ["interlcm.json", "visual_encoder_3step.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "w"]  # no temporaries beside it

    os.chdir(ours)
    try:
        result = invoke("init", "--out", ".", "--force")
    finally:
        os.chdir(tmp_path)
    assert result.exit_code == 1 and "holds the current folder" in result.output


def test_stale_temporaries_of_a_killed_init_are_removed(tmp_path, quick_init):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{files.TEMP_PREFIX}{int(dead.stdout)}-0000-w"
    (stale / "lcm").mkdir(parents=True)
    assert invoke("init", "--out", tmp_path / "w").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_disk_full_during_init_is_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    def full(tmp, cfg, preset, seed):
        (tmp / "lcm").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "_write_random", full)
    result = invoke("init", "--out", tmp_path / "w")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot write the weights folder {tmp_path / 'w'}: no space left on the device: "
        "free some space or choose another location"
    ]
    assert list(tmp_path.iterdir()) == []


def test_init_honours_the_umask(tmp_path, quick_init):
    old = os.umask(0o002)
    try:
        weights.init_weights(tmp_path / "w", "tiny")
    finally:
        os.umask(old)
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o775
    assert [(tmp_path / "w" / n).stat().st_mode & 0o777 for n in ("interlcm.json", "visual_encoder_3step.pth")] == [
        0o664,
        0o664,
    ]


def test_verify_checks_the_recorded_preset(tmp_path, tiny_weights):
    folder = shutil.copytree(tiny_weights, tmp_path / "w")
    info = json.loads((folder / "interlcm.json").read_text())
    (folder / "interlcm.json").write_text(json.dumps({**info, "preset": "sd15"}))
    result = invoke("verify", folder)
    assert result.exit_code == 1 and "says preset 'sd15' but the files are another size" in result.output
    with pytest.raises(WeightsError, match="says preset 'sd15'"):
        weights.load_models(folder)  # restore refuses it too


@pytest.mark.parametrize("keep", [0.5, 10])
def test_truncated_clip_safetensors_is_one_sentence(tmp_path, tiny_weights, keep):
    folder = shutil.copytree(tiny_weights, tmp_path / "w")
    clip = folder / "clip" / "model.safetensors"
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    result = invoke("verify", folder)
    assert result.exit_code == 1 and "model.safetensors is truncated" in result.output, result.output
    with pytest.raises(WeightsError, match="is truncated"):
        weights.load_models(folder)


@pytest.mark.parametrize("seed", [str(2**64), "-1", "1.5"])
def test_seed_out_of_range_is_one_sentence(tmp_path, seed):
    result = invoke("init", "--out", tmp_path / "w", "--seed", seed)
    assert result.exit_code == 2 and "give a seed from 0 to 4294967295" in result.output
    assert not (tmp_path / "w").exists()

