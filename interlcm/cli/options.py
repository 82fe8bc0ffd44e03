"""Click parameter types shared by every CLI (click only: `--help` stays instant)."""

from __future__ import annotations

import click

# 32 bits fit every consumer of a seed: torch and numpy generators, and build_random's
# per-component seeds (seed * 1000 + offset must stay below 2**64).
SEED_MAX = 2**32 - 1


class SeedType(click.ParamType):
    """A seed in 0 .. SEED_MAX; anything else is refused in one sentence naming the range."""

    name = "seed"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        try:
            seed = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number: give a seed from 0 to {SEED_MAX}", param, ctx)
        if not 0 <= seed <= SEED_MAX:
            self.fail(f"{seed} is out of range: give a seed from 0 to {SEED_MAX}", param, ctx)
        return seed


SEED = SeedType()
