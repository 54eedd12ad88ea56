"""The randomness of one online micro-step, drawn from the global torch RNG before anything is sampled.

The trainer checkpoints that RNG, so a resumed run replays an uninterrupted one exactly. Each micro-step
draws four numbers per pair of the global micro-batch (route and self-label uniforms, an oracle uniform, a
generation seed), always in the same order and amount; every process draws them all and keeps its own
slice, so N processes replay one process at the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robalign.distributed import rank_and_world


def local_uniforms(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n uniforms from the global RNG: this process's slice of draws for the whole global micro-batch.

    Every process draws the same world·n numbers (their RNGs are seeded alike) and keeps its own slice, so
    the ranks' routes and labels are independent, and N processes draw for a global batch exactly what
    one process draws for it (the global stream advances by the same amount either way).
    """
    rank, world = rank_and_world()
    return torch.rand(n * world, dtype=dtype)[rank * n:(rank + 1) * n]


def local_seeds(n: int) -> list[int]:
    """n per-pair seeds (generation) from the global RNG, sliced per process like `local_uniforms`."""
    rank, world = rank_and_world()
    return torch.randint(2**62, (n * world,))[rank * n:(rank + 1) * n].tolist()


@dataclass
class Draws:
    """The randomness of one online micro-step, per pair, fixed before anything is sampled."""

    routes: torch.Tensor  # float32 [B], SAIL's route uniforms
    self_label: torch.Tensor  # float32 [B], SAIL's self-labelling uniforms
    oracle: torch.Tensor  # float64 [B], oracle label uniforms
    seeds: list[int]  # [B] generation seeds

    @staticmethod
    def take(n: int) -> Draws:
        """Always the same draws in the same order (4 per pair), whatever the route or process count, so
        a resumed run and an N-process run replay the 1-process stream."""
        return Draws(local_uniforms(n), local_uniforms(n), local_uniforms(n, torch.float64), local_seeds(n))
