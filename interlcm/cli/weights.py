"""`interlcm-weights`: fill, create and check a weights folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from interlcm.cli.options import SEED, Group
from interlcm.config import PRESETS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Get InterLCM weights: download the released ones, or make seeded random ones."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Weights folder to fill.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    default=("3step",),
    show_default=True,
    help="Checkpoint pairs to fetch: 3step, 1step, colorization, inpainting (repeatable).",
)
@click.option(
    "--faces/--no-faces",
    default=True,
    show_default=True,
    help="Also fetch facexlib's face detectors and parser (whole-photo mode) into OUT/facelib.",
)
@click.option("--realesrgan", is_flag=True, help="Also fetch RealESRGAN_x2plus.pth (for --bg-upsampler / --face-upsample).")
def download(out: Path, variants: tuple[str, ...], faces: bool, realesrgan: bool) -> None:
    """Download the released LCM, CLIP, InterLCM encoders and face networks into OUT (needs internet)."""
    from interlcm.download import DownloadError, download_weights
    from interlcm.weights import verify_weights

    try:
        download_weights(out, variants, faces=faces, realesrgan=realesrgan)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    _report(verify_weights(out, variants), out)


@main.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Weights folder to create.")
@click.option("--force", is_flag=True, help="Replace OUT if it is empty or a weights folder (never anything else).")
def init(preset: str, seed: int, out: Path, force: bool) -> None:
    """Write a weights folder with seeded random weights (same layout as the download, face networks included)."""
    from interlcm.checkpoint import WeightsError
    from interlcm.weights import init_weights

    try:
        init_weights(out, preset, seed, force=force)
    except WeightsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote random {preset} weights (seed {seed}) to {out}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--variant", "variants", multiple=True, default=("3step",), show_default=True)
def verify(folder: Path, variants: tuple[str, ...]) -> None:
    """Check FOLDER: every file present, loadable and matching the model."""
    from interlcm.weights import verify_weights

    _report(verify_weights(folder, variants), folder)


def _report(problems: list[str], folder: Path) -> None:
    if problems:
        for p in problems:
            click.echo(f"error: {p}", err=True)
        sys.exit(1)
    click.echo(f"{folder}: complete and loadable")


if __name__ == "__main__":
    main()
