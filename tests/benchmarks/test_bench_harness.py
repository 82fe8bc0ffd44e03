"""The benchmark harness on the tiny preset: it runs, reports every field, writes its files.

No timing is asserted: these run on shared machines.
"""

import json
import math
import time

import pytest
import torch

from interlcm.backend import TimedBackend
from interlcm.benchmarks.backends import ReleaseStyle
from interlcm.benchmarks.harness import run_benchmark
from interlcm.benchmarks.measure import CpuMeter, PeakRss, Stats
from interlcm.benchmarks.report import plot, render, write_json
from interlcm.benchmarks.schema import BenchSettings
from interlcm.sampler import SamplerSettings, restore
from interlcm.schedule import make_noise, make_schedule
from interlcm.torch_backend import TorchBackend

ROW_FIELDS = {
    "backend", "precision", "batch", "label", "device", "description", "skipped", "failed", "load_s", "first_run_s",
    "time_to_first_result_s", "end_to_end", "seconds_per_image", "images_per_s", "host_other_s", "components",
    "gflop_per_restoration", "gflops", "fraction_of_peak", "peak_rss_mb", "rss_before_mb", "gpu_peak_mb",
    "process_cores", "other_cores", "threads",
}
COMPONENT_FIELDS = {"name", "calls", "per_call", "per_restoration", "gflop_per_call", "gflops", "fraction_of_peak"}
STATS_FIELDS = {"median", "p90", "min", "n"}


def _settings(tmp_path, **kw) -> BenchSettings:
    defaults = dict(preset="tiny", batches=(1, 2), warmup=1, runs=2, threads=1, probe_max_n=256, cache_dir=tmp_path)
    return BenchSettings(**{**defaults, **kw})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # an empty --onnx folder: the onnxruntime rows must be skipped with a reason, not crash
    # (exporting takes a minute even for tiny: see the slow test below)
    tmp = tmp_path_factory.mktemp("bench")
    settings = _settings(tmp, backends=("torch", "torch-release", "onnxruntime", "tensorrt"), onnx=tmp / "no-onnx")
    return run_benchmark(settings, log=lambda msg: None)


def test_torch_rows_ran_and_others_say_why(report):
    rows = {r.label: r for r in report.rows}
    for label in ("torch fp32 b1", "torch fp32 b2", "torch-release fp32 b1", "torch-release fp32 b2"):
        assert rows[label].skipped is None, rows[label].skipped
        assert rows[label].end_to_end.n == 2
    assert "manifest.json" in rows["onnxruntime fp32 b1"].skipped
    if not torch.cuda.is_available():
        assert "GPU" in rows["tensorrt fp32 b1"].skipped


@pytest.mark.slow
def test_onnxruntime_rows_from_a_cached_export(tmp_path):
    """Exports tiny into the cache (about a minute), runs it, then reuses the cache."""
    from interlcm.benchmarks.onnx_cache import exporter_available

    if exporter_available() is not None:
        pytest.skip(exporter_available())
    settings = _settings(tmp_path, backends=("torch", "onnxruntime"))
    first = run_benchmark(settings, log=lambda msg: None)
    assert first.onnx["exported_now"]
    rows = {r.label: r for r in first.rows}
    assert rows["onnxruntime fp32 b1"].skipped is None and rows["onnxruntime fp32 b2"].end_to_end.n == 2
    assert {r.what for r in first.ratios if r.kind == "backend"} >= {"end to end", "unet"}
    again = run_benchmark(_settings(tmp_path, backends=("onnxruntime",), batches=(1,)), log=lambda msg: None)
    assert not again.onnx["exported_now"] and again.rows[0].skipped is None


def test_json_has_every_field(report, tmp_path):
    path = tmp_path / "bench.json"
    write_json(report, path)
    data = json.loads(path.read_text())
    assert data["random_weights"] is True and data["weights"].startswith("random")
    for key in ("cpu_model", "logical_cores", "torch_threads", "gpus", "date", "command", "versions"):
        assert key in data["environment"]
    for lib in ("torch", "onnxruntime", "diffusers", "transformers"):
        assert lib in data["environment"]["versions"]
    assert data["paper"]["seconds_per_image"] == 0.421 and "3090" in data["paper"]["hardware"]
    assert data["peaks"][0]["gflops"] > 0
    for row in data["rows"]:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        if row["skipped"] is not None or row["failed"] is not None:
            continue
        assert STATS_FIELDS <= set(row["end_to_end"]) and STATS_FIELDS <= set(row["process_cores"])
        assert row["peak_rss_mb"] > 0 and row["time_to_first_result_s"] >= row["first_run_s"] > 0
        for comp in row["components"]:
            assert COMPONENT_FIELDS <= set(comp)
            assert STATS_FIELDS <= set(comp["per_call"])
    assert {r["kind"] for r in data["ratios"]} >= {"release", "batch"}


def test_flops_positive_and_components_sum_to_total(report):
    for name, f in report.flops.items():
        assert f.flops >= 0 and sum(f.by_op.values()) == f.flops, name
    for row in report.rows:
        if not row.ran:
            continue
        assert row.gflop_per_restoration > 0 and 0 < row.fraction_of_peak
        total = sum(c.gflop_per_call * c.calls for c in row.components if c.gflop_per_call is not None)
        assert math.isclose(total, row.gflop_per_restoration, rel_tol=1e-9)
        # per image, FLOPs do not depend on the batch
        b1 = next(r for r in report.rows if (r.backend, r.batch) == (row.backend, 1))
        assert math.isclose(row.gflop_per_restoration / row.batch, b1.gflop_per_restoration, rel_tol=1e-9)


def test_release_row_runs_the_full_spatial_encoder(report):
    release = next(r for r in report.rows if r.backend == "torch-release")
    names = {c.name: c.calls for c in release.components}
    assert "se_condition" not in names and "spatial_encoder" not in names
    assert names["spatial_encoder_full"] == report.steps == names["unet"]


def test_terminal_report_names_random_weights_and_keeps_the_paper_out_of_ratios(report):
    text = render(report)
    assert "RANDOM WEIGHTS" in text
    paper_lines = [line for line in text.splitlines() if "0.421" in line]
    assert paper_lines and all(line.startswith("paper:") for line in paper_lines)
    assert "RTX 3090" in paper_lines[0]


def test_plot_is_written(report, tmp_path):
    path = tmp_path / "bench.png"
    plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_release_style_restores_the_same_image(tiny_models, lq_photo):
    """Recomputing the SE embedding every step changes the cost, not the result."""
    cfg = tiny_models.config
    settings = SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim)
    noise = make_noise(0, 4, lq_photo.shape[0], cfg.latent_channels, (cfg.latent_size, cfg.latent_size))
    ours = restore(TorchBackend(tiny_models), lq_photo, noise, settings)
    clock = TimedBackend(TorchBackend(tiny_models))
    theirs = restore(ReleaseStyle(clock), lq_photo, noise, settings)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert [n for n, _ in clock.take()].count("spatial_encoder_full") == 3


def test_isolated_components(tmp_path):
    settings = _settings(tmp_path, backends=("torch",), batches=(1,), components=("unet", "vae_decoder"))
    (row,) = run_benchmark(settings, log=lambda msg: None).rows
    assert row.end_to_end is None and [c.name for c in row.components] == ["unet", "vae_decoder"]
    assert all(c.calls == 1 and c.gflops > 0 for c in row.components)


def test_settings_reject_typos():
    with pytest.raises(ValueError, match="backend 'ort'"):
        BenchSettings(backends=("ort",))
    with pytest.raises(ValueError, match="component 'unett'"):
        BenchSettings(components=("unett",))
    with pytest.raises(ValueError, match="warmup"):
        BenchSettings(warmup=0)


def test_measuring_instruments():
    s = Stats.of([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.n) == (2.0, 1.0, 3) and 2.0 <= s.p90 <= 3.0
    with PeakRss() as rss:
        block = torch.ones(64, 2**20)  # 256 MB
        block.add_(1)
    del block
    assert rss.peak - rss.before > 200 * 2**20
    with CpuMeter() as meter:
        time.sleep(0.3)  # wall time that costs no CPU
    assert 0.3 <= meter.result.wall_s < 5 and meter.result.process_cpu_s < 0.15


def test_cli_writes_json_and_plot(tmp_path):
    from click.testing import CliRunner

    from interlcm.benchmarks.cli import main

    args = ["--preset", "tiny", "--backend", "torch", "--warmup", "1", "--runs", "1", "--threads", "1",
            "--probe-n", "128", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "RANDOM WEIGHTS" in result.output
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["skipped"] is None
    assert (tmp_path / "b.png").stat().st_size > 0
    bad = CliRunner().invoke(main, ["--backend", "torch,ort"])
    assert bad.exit_code != 0 and "ort" in bad.output


def test_weights_folder_is_identified(tiny_weights, tmp_path):
    settings = _settings(tmp_path, backends=("torch",), batches=(1,), runs=1, weights=tiny_weights)
    report = run_benchmark(settings, log=lambda msg: None)
    assert report.rows[0].skipped is None
    assert report.random_weights  # init_weights writes random weights, and says so
    assert "content sha256" in report.weights and str(tiny_weights) in report.weights


def test_a_failing_row_is_recorded_and_the_others_kept(tmp_path, monkeypatch):
    def broken(self, component, **inputs):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(ReleaseStyle, "run", broken)
    settings = _settings(tmp_path, backends=("torch-release", "torch"), batches=(1,), runs=1)
    report = run_benchmark(settings, log=lambda msg: None)
    rows = {r.backend: r for r in report.rows}
    assert rows["torch"].ran and rows["torch-release"].failed == "RuntimeError: out of memory"
    assert "FAILED" in render(report) and not [r for r in report.ratios if r.kind == "release"]


def test_fused_step_graph_and_precision_rows(tmp_path):
    """The GPU benchmark's columns on a CPU: the fused step runs (and is set against the separate calls), graph
    rows and torch fp16 say why they cannot run here, torch bf16 runs on a cast copy of the models."""
    settings = _settings(tmp_path, backends=("torch",), batches=(1,), runs=1, precisions=("fp32", "bf16", "fp16"),
                         fused=(False, True), graphs=(False, True))
    report = run_benchmark(settings, log=lambda msg: None)
    rows = {r.label: r for r in report.rows}
    fused = rows["torch fp32 b1 fused"]
    assert fused.ran and {c.name: c.calls for c in fused.components}["denoise_step"] == report.steps
    assert "spatial_encoder" not in {c.name for c in fused.components}
    assert rows["torch bf16 b1"].ran and "bf16 weights" in rows["torch bf16 b1"].description
    if not torch.cuda.is_available():
        assert rows["torch fp32 b1 graph"].skipped.startswith("--cuda-graph needs a CUDA device")
        assert rows["torch fp16 b1 fused"].skipped.startswith("torch runs fp16 on CUDA devices only")
    (ratio,) = [r for r in report.ratios if r.kind == "step" and r.numerator == fused.label]
    assert ratio.denominator == "torch fp32 b1" and ratio.value > 0
    text = render(report)
    assert "fused step and CUDA graph vs separate SE and UNet calls" in text
    assert any(line.startswith("torch fp32 b1 fused ") and " fused " in line for line in text.splitlines())
