"""`interlcm-train`: train InterLCM's Visual and Spatial Encoders."""

from __future__ import annotations

from pathlib import Path

import click

from interlcm.cli.options import Command


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="YAML or TOML training config (see configs/train_*.yaml). Optional with --resume.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (repeatable), e.g. --set lr=1e-4 --set degradation.task=inpainting.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Checkpoint to continue from (OUT/checkpoints/step_N.pt); its config is used if --config is not given.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Run folder (overrides `out`).")
def main(config_path: Path | None, overrides: tuple[str, ...], resume: Path | None, out: Path | None) -> None:
    """Train VE and SE through the frozen LCM chain; EMA weights go to OUT/weights in the released format."""
    from interlcm.checkpoint import WeightsError
    from interlcm.files import FilesError, describe_os_error
    from interlcm.train.config import TrainConfig, apply_overrides, read_config_file
    from interlcm.train.losses import PerceptualWeightsError
    from interlcm.train.trainer import Trainer, read_checkpoint

    if config_path is None and resume is None:
        raise click.UsageError(
            "give --config FILE (or --resume CHECKPOINT to continue a run with its own config)"
        )
    try:
        if config_path is not None:
            data = read_config_file(config_path)
        else:
            data = read_checkpoint(resume)["config"]
        if out is not None:
            overrides = (*overrides, f"out={out}")
        cfg = TrainConfig.from_dict(apply_overrides(data, overrides))
        trainer = Trainer(cfg, resume=resume)
        weights = trainer.fit()
    except (ValueError, FileNotFoundError, WeightsError, PerceptualWeightsError, FilesError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. disk full while linking or writing the run folder's weights
        raise click.ClickException(describe_os_error(exc, f"cannot write the run folder {out or 'OUT'}")) from None
    click.echo(f"trained to step {trainer.step}; EMA weights ({cfg.variant}) in {weights}")


if __name__ == "__main__":
    main()
