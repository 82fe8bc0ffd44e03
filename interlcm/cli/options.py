"""Click parameter types shared by every CLI (click only: `--help` stays instant)."""

from __future__ import annotations

import click

# 32 bits fit every consumer of a seed: torch and numpy generators, and build_random's
# per-component seeds (seed * 1000 + offset must stay below 2**64).
SEED_MAX = 2**32 - 1


class SeedType(click.ParamType):
    """A seed in 0 .. SEED_MAX; anything else is refused in one sentence naming the range."""

    name = "seed"

    def convert(self, value, param, ctx):
        try:
            seed = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number: give a seed from 0 to {SEED_MAX}", param, ctx)
        if not 0 <= seed <= SEED_MAX:
            self.fail(f"{seed} is out of range: give a seed from 0 to {SEED_MAX}", param, ctx)
        return seed


SEED = SeedType()


INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class _Interruptible:
    """Ctrl-C ends the command with one line and exit code 130 (click's own handling prints
    "Aborted!" and exits 1, which scripts cannot tell from a failure)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except KeyboardInterrupt:
            click.echo("\ninterrupted (Ctrl-C): every file written so far is complete", err=True)
            raise click.exceptions.Exit(INTERRUPTED_EXIT) from None


class Group(_Interruptible, click.Group):
    """`@click.group(cls=Group)`: a command group that exits 130 on Ctrl-C."""


class Command(_Interruptible, click.Command):
    """`@click.command(cls=Command)`: a command that exits 130 on Ctrl-C."""
