"""`interlcm-export`: every component to ONNX (fp32, and fp16 with --fp16), validated against torch."""

from __future__ import annotations

from pathlib import Path

import click

from interlcm.config import PRESETS


def _batch(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected MIN:OPT:MAX, e.g. 1:1:4") from None
    return lo, opt, hi


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--variant", default="3step", show_default=True, help="Encoder pair in the weights folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
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
@click.option("--resolution", type=int, help="Face crop size in pixels (default: the preset's).")
@click.option("--opset", type=int, default=17, show_default=True)
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
@click.option("--threads", type=int, default=2, show_default=True, help="torch and ONNX Runtime threads.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
def main(
    preset: str,
    weights: Path | None,
    variant: str,
    seed: int,
    fp16: bool,
    components: tuple[str, ...],
    batch: tuple[int, int, int],
    resolution: int | None,
    opset: int,
    force: bool,
    no_validate: bool,
    validate_dir: Path | None,
    validate_batches: tuple[int, ...],
    threads: int,
    out: Path | None,
) -> None:
    """Export InterLCM's components to ONNX in OUT, with manifest.json, and validate them."""
    import torch

    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.config import get_preset
    from interlcm.export.manifest import ManifestError, load_manifest
    from interlcm.export.onnx_export import ExportError, ValidationError, export_all, validate
    from interlcm.models.container import build_random
    from interlcm.weights import WeightsError, load_models, weights_identity

    torch.set_num_threads(threads)
    names = [n for c in components for n in c.split(",") if n] or list(DEFAULT_COMPONENTS)
    try:
        if validate_dir is not None:
            manifest = load_manifest(validate_dir)
            cfg = manifest.config
            if weights is None and not manifest.weights.startswith("random, seed "):
                raise click.ClickException(
                    f"{validate_dir} was exported from weights {manifest.weights}: pass --weights"
                )
            seed = int(manifest.weights.removeprefix("random, seed ")) if weights is None else seed
            resolution = cfg.resolution
        else:
            cfg = get_preset(preset)
            if out is None:
                raise click.UsageError("--out is required (or --validate-only DIR)")
        if weights is not None:
            models, identity = load_models(weights, variant, resolution), weights_identity(weights, variant)
        else:
            cfg = cfg.with_resolution(resolution) if resolution else cfg
            models = build_random(cfg, seed)
            identity = models.origin
        if validate_dir is None:
            precisions = ("fp32", "fp16") if fp16 else ("fp32",)
            export_all(
                models, out, names, precisions, batch=batch, opset=opset, force=force, weights=identity
            )
        if validate_dir is not None or not no_validate:
            chosen = names if components or validate_dir is None else None
            validate(validate_dir or out, models, components=chosen, batches=validate_batches or None, echo=click.echo)
            click.echo("all outputs within tolerance")
    except (ExportError, ValidationError, ManifestError, WeightsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
