"""`interlcm-export`: every component to ONNX (fp32, and fp16 with --fp16), validated against torch."""

from __future__ import annotations

from pathlib import Path

import click

from interlcm.choices import DEFAULT_VARIANT, VARIANTS
from interlcm.cli.options import SEED, Command
from interlcm.config import PRESETS


def _batch(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected MIN:OPT:MAX, e.g. 1:1:4") from None
    return lo, opt, hi


def _dims(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for item in value:
        name, _, text = item.partition("=")
        try:
            lo, opt, hi = (int(v) for v in text.split(":"))
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected NAME=MIN:OPT:MAX, e.g. height=256:640:1024") from None
        out[name] = (lo, opt, hi)
    return out


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="sd15",
    show_default=True,
    help="Architecture for random weights (ignored with --weights).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Weights folder (interlcm-weights); without it, seeded random weights.",
)
@click.option(
    "--variant", type=click.Choice(list(VARIANTS)), default=DEFAULT_VARIANT, show_default=True,
    help="Encoder pair in the weights folder (recorded: restore refuses the export for another variant).",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--fp16", is_flag=True, help="Also write fp16 graphs (fp32 islands, fp32 I/O) next to the fp32 ones."
)
@click.option(
    "--components",
    "components",
    multiple=True,
    help="Components to export (repeatable or comma-separated); default: every non-optional one.",
)
@click.option(
    "--batch",
    default="1:1:4",
    show_default=True,
    callback=_batch,
    help="Dynamic batch range MIN:OPT:MAX (OPT is traced; the engine profile uses all three).",
)
@click.option(
    "--dims",
    multiple=True,
    callback=_dims,
    help="Run-time size range of a component dimension, NAME=MIN:OPT:MAX (repeatable): the detectors' "
    "height and width (default 64:640:4096), parsenet's size (512:512:512). OPT is traced; the engine "
    "profile uses all three. Pass the same values to --validate-only.",
)
@click.option(
    "--resolution", type=click.IntRange(min=1), help="Face crop size in pixels, a multiple of 64 (default: the preset's)."
)
# 17: the first with LayerNormalization; 20: the newest the TorchScript exporter writes
@click.option("--opset", type=click.IntRange(17, 20), default=17, show_default=True)
@click.option("--force", is_flag=True, help="Re-export files that are up to date.")
@click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs torch check after export.")
@click.option(
    "--validate-only",
    "validate_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Only re-check an existing export folder against torch.",
)
@click.option(
    "--validate-batch",
    "validate_batches",
    type=int,
    multiple=True,
    help="Batch sizes to validate at (repeatable); default: the profile's min and one other than the traced.",
)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch and ONNX Runtime threads.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
def main(
    preset: str,
    weights: Path | None,
    variant: str,
    seed: int,
    fp16: bool,
    components: tuple[str, ...],
    batch: tuple[int, int, int],
    dims: dict[str, tuple[int, int, int]],
    resolution: int | None,
    opset: int,
    force: bool,
    no_validate: bool,
    validate_dir: Path | None,
    validate_batches: tuple[int, ...],
    threads: int,
    out: Path | None,
) -> None:
    """Export InterLCM's components to ONNX in OUT, with manifest.json, and validate them.

    The face networks (retinaface_resnet50, retinaface_mobile, parsenet) are exported only
    when named in --components; their weights come from WEIGHTS/facelib (or are random).
    """
    import torch

    from interlcm.checkpoint import WeightsError
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.config import get_preset
    from interlcm.export.manifest import MANIFEST, ManifestError, load_manifest
    from interlcm.export.onnx_export import ExportError, export_all
    from interlcm.export.validate import validate
    from interlcm.faces.networks import FACE_NETWORKS
    from interlcm.files import FilesError, check_replaceable
    from interlcm.identity import WeightsIdentity
    from interlcm.models.container import random_source
    from interlcm.parity import ParityError
    from interlcm.weights import check_identity, folder_identity, folder_source

    torch.set_num_threads(threads)
    names = [n for c in components for n in c.split(",") if n] or list(DEFAULT_COMPONENTS)
    try:
        faces = [n for n in names if n in FACE_NETWORKS]
        if validate_dir is not None:
            manifest = load_manifest(validate_dir)
            faces = [n for n in dict.fromkeys(e.component for e in manifest.entries) if n in FACE_NETWORKS]
            cfg, identity, variant = manifest.config, manifest.identity, manifest.identity.variant
            if identity.kind == "folder" and weights is None:
                raise click.ClickException(f"{validate_dir} was exported from {identity.describe()}: pass --weights DIR")
            check_identity(identity, weights=weights, what=str(validate_dir))
            seed, resolution = identity.seed, cfg.resolution
        else:
            cfg = get_preset(preset)
            if out is None:
                raise click.UsageError("--out is required (or --validate-only DIR)")
            check_replaceable(out, MANIFEST, "an export folder")  # exports add to ours, never to others'
        identity = folder_identity(weights, variant) if weights is not None else WeightsIdentity.random(
            cfg.name, seed, variant
        )
        # each network is made when its component needs it and dropped after (engines: one at a time)
        if "realesrgan" in names:  # the upsampler has its own weights: exported on its own
            models = _upsampler_models(names, cfg, weights, seed)
        elif weights is not None:
            models = folder_source(weights, variant, resolution)
        else:
            models = random_source(cfg.with_resolution(resolution) if resolution else cfg, seed, faces=faces)
        models.config.with_resolution(models.config.resolution)  # ValueError for a size the networks cannot take
        if validate_dir is None:
            precisions = ("fp32", "fp16") if fp16 else ("fp32",)
            export_all(
                models, out, names, precisions, batch=batch, opset=opset, force=force, identity=identity, dims=dims
            )
        if validate_dir is not None or not no_validate:
            chosen = names if components or validate_dir is None else None
            validate(
                validate_dir or out,
                models,
                components=chosen,
                batches=validate_batches or None,
                echo=click.echo,
                dims=dims,
            )
            click.echo("all outputs within tolerance")
    except (ExportError, ParityError, ManifestError, WeightsError, FilesError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _upsampler_models(names, cfg, weights, seed):
    """Real-ESRGAN for the preset (or the weights folder's), and the identity its files record."""
    from interlcm.models.rrdbnet import build_random_upsampler
    from interlcm.weights import folder_source, load_upsampler

    if names != ["realesrgan"]:
        raise click.UsageError("export realesrgan on its own: --components realesrgan, into its own --out folder")
    if weights is None:
        return build_random_upsampler(cfg, seed)
    return load_upsampler(weights, folder_source(weights).config)


if __name__ == "__main__":
    main()
