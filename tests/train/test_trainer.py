"""Training on the tiny preset: overfitting, exact resume, export, frozen parts, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from interlcm.imageio import to_uint8
from interlcm.models.lcm import VaeDecode, VaeEncode
from interlcm.sampler import SamplerSettings, restore
from interlcm.schedule import make_noise, make_schedule
from interlcm.testing import photo
from interlcm.torch_backend import TorchBackend
from interlcm.train.config import TrainConfig
from interlcm.train.losses import PerceptualWeightsError
from interlcm.train.trainer import Trainer
from interlcm.weights import encoder_paths, load_models, read_params_ema


def tiny_config(weights, out, **overrides) -> TrainConfig:
    base = dict(
        weights=str(weights),
        out=str(out),
        allow_random_perceptual=True,  # the tiny models are random: so is the VGG
        perceptual_channels=(8, 16, 32, 32, 32),
        disc_channels=8,
        disc_layers=2,
        batch_size=2,
        max_steps=100,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A folder of four real face crops (96 px PNGs; the dataset resizes to 64)."""
    root = tmp_path_factory.mktemp("faces")
    for i, img in enumerate(photo(96, batch=4)):
        Image.fromarray(to_uint8(img)).save(root / f"face_{i}.png")
    return root


def test_overfits_a_fixed_batch(tiny_weights, tmp_path):
    """40 steps on 2 fixed real crops with fixed noise: the loss must fall below 0.67x its start.

    The frozen tiny VAE is random, so it cannot draw a real photo; the target is the photo
    through that VAE (an image its decoder can make), the input the photo downsampled 4x.
    Measured (1 thread): 0.3977 -> 0.2597 (0.65x); see interlcm/train/README.md. Seeded and on one
    thread, so the ratio moves only by float reassociation; half the learning rate gives 0.69x and
    fails here (the 0.7x limit this replaced let it pass).
    """
    cfg = tiny_config(tiny_weights, tmp_path, variant="1step", lr=3e-3, lr_min_ratio=1.0, disc_start=10**6)
    trainer = Trainer(cfg)
    hq = photo(64, batch=2)
    vae = trainer.models.vae
    with torch.no_grad():
        target = VaeDecode(vae)(VaeEncode(vae)(hq))
    lq = F.interpolate(F.interpolate(hq, size=16, mode="bilinear"), size=64, mode="bilinear")
    losses = [trainer.train_step({"hq": target, "lq": lq}, noise_seed=0)["loss"] for _ in range(40)]
    start, end = losses[0], sum(losses[-3:]) / 3
    print(f"overfit: loss {start:.4f} -> {end:.4f} ({end / start:.2f}x) over {len(losses)} steps")
    assert end < 0.67 * start, losses


def test_frozen_parts_get_no_grads_and_stay_put(tiny_weights, tmp_path):
    cfg = tiny_config(tiny_weights, tmp_path, batch_size=1, disc_start=1, lr=1e-3)  # GAN on from step 1
    trainer = Trainer(cfg)
    frozen = {
        n: {k: v.clone() for k, v in getattr(trainer.models, n).state_dict().items()}
        for n in ("clip", "unet", "vae")
    }
    trainable = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in trainer.trainable.items()}
    disc = {k: v.clone() for k, v in trainer.disc.state_dict().items()}
    logs = trainer.train_step({"hq": photo(64, 1), "lq": photo(64, 1)})
    assert {"g_adv", "d_loss", "gan_weight"} <= set(logs)
    for name, before in frozen.items():
        module = getattr(trainer.models, name)
        assert all(p.grad is None and not p.requires_grad for p in module.parameters()), name
        after = module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{name} changed"
    assert all(p.grad is None for p in trainer.lpips.parameters())
    for name, before in trainable.items():
        after = trainer.trainable[name].state_dict()
        changed = sum(not torch.equal(before[k], after[k]) for k in before)
        assert changed > 0.5 * len(before), f"{name}: only {changed}/{len(before)} tensors moved"
    assert any(not torch.equal(disc[k], v) for k, v in trainer.disc.state_dict().items())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_weights, tmp_path):
    grads = []
    for ckpt in (False, True):
        trainer = Trainer(tiny_config(tiny_weights, tmp_path, batch_size=1, gradient_checkpointing=ckpt))
        image = trainer.forward(photo(64, 1), noise_seed=3)
        (image - photo(64, 1)).abs().mean().backward()
        grads.append(
            torch.cat([p.grad.flatten() for m in trainer.trainable.values() for p in m.parameters()])
        )
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def _log(path):
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_resume_repeats_the_next_step_exactly(tiny_weights, faces, tmp_path):
    """3 steps straight vs 2 steps, checkpoint, new process state, 1 more step: same losses.

    The discriminator starts at step 2, so its weights, optimiser and schedule are in the
    checkpoint too; step 3 also draws a new epoch (4 images / batch 2 = 2 steps per epoch)."""
    common = dict(variant="1step", data=str(faces), disc_start=2, log_every=1, val_every=10**6, max_steps=3)
    straight = Trainer(tiny_config(tiny_weights, tmp_path / "a", ckpt_every=2, **common))
    straight.fit()
    ckpt = tmp_path / "a" / "checkpoints" / "step_000002.pt"
    assert ckpt.is_file() and (tmp_path / "a" / "checkpoints" / "step_000003.pt").is_file()

    torch.manual_seed(1234)  # scramble global RNGs: the checkpoint must restore them
    resumed = Trainer(tiny_config(tiny_weights, tmp_path / "b", ckpt_every=10**6, **common), resume=ckpt)
    assert resumed.step == 2
    resumed.fit()
    a, b = _log(tmp_path / "a" / "train_log.jsonl"), _log(tmp_path / "b" / "train_log.jsonl")
    assert set(b) == {3} and "d_loss" in a[3]
    for key in ("loss", "l1", "perceptual", "g_adv", "d_loss", "grad_norm", "lr"):
        assert b[3][key] == a[3][key], (key, a[3][key], b[3][key])
    for k, v in straight.ema.state_dict()["spatial_encoder"].items():
        assert torch.equal(v, resumed.ema.state_dict()["spatial_encoder"][k]), k
    # and a run that did not resume differs at step 3 (the comparison can fail)
    assert a[2]["loss"] != a[3]["loss"]
    # the end of the run left a validation grid of [LQ | restored | HQ] rows
    grid = Image.open(tmp_path / "a" / "val" / "step_000003.png")
    assert grid.size == (3 * 64, 4 * 64)


def test_exported_params_ema_load_and_change_restoration(tiny_weights, tmp_path):
    cfg = tiny_config(tiny_weights, tmp_path, ema_decay=0.5, lr=1e-3, batch_size=1)
    trainer = Trainer(cfg)
    for _ in range(2):
        trainer.train_step({"hq": photo(64, 1), "lq": photo(64, 1)})
    folder = trainer.export_weights()
    ve_path, se_path = encoder_paths(folder, "3step")
    ema = trainer.ema.state_dict()
    for path, name in ((ve_path, "visual_encoder"), (se_path, "spatial_encoder")):
        saved = read_params_ema(path)  # the released {"params_ema": ...} layout
        assert all(torch.equal(saved[k], v) for k, v in ema[name].items())

    lq = photo(64, 2)

    def run(weights):
        models = load_models(weights, "3step")
        c = models.config
        noise = make_noise(0, 4, 2, c.latent_channels, (c.latent_size, c.latent_size))
        return restore(
            TorchBackend(models),
            lq,
            noise,
            SamplerSettings(make_schedule(c.scheduler, 4), guidance_dim=c.guidance_dim),
        )

    before, after = run(tiny_weights), run(folder)
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-3


def test_refuses_a_random_perceptual_network(tiny_weights, tmp_path):
    cfg = tiny_config(tiny_weights, tmp_path, allow_random_perceptual=False)
    with pytest.raises(PerceptualWeightsError, match="perceptual_weights=FILE"):
        Trainer(cfg)


def test_cli_trains_two_steps(tiny_weights, faces, tmp_path):
    from click.testing import CliRunner

    from interlcm.train.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(
        f"weights: {tiny_weights}\ndata: {faces}\nvariant: 1step\nallow_random_perceptual: true\n"
        "perceptual_channels: [8, 16, 32, 32, 32]\ndisc_channels: 8\ndisc_layers: 2\nbatch_size: 2\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "--config",
            str(config),
            "--set",
            "max_steps=2",
            "--set",
            "log_every=1",
            "--set",
            "lr=1e-4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained to step 2" in result.output
    assert sorted(_log(out / "train_log.jsonl")) == [1, 2]
    assert (out / "checkpoints" / "step_000002.pt").is_file()
    assert (out / "val" / "step_000002.png").is_file()
    load_models(out / "weights", "1step")  # the export is a complete weights folder

    bad = CliRunner().invoke(main, ["--config", str(config), "--set", "lr=fast"])
    assert bad.exit_code != 0 and "lr='fast'" in bad.output
