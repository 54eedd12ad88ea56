"""Seeded train/eval splits and truncation of pair lists."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from robalign.errors import ConfigError

T = TypeVar("T")


def train_eval_split(items: Sequence[T], eval_fraction: float, seed: int, *,
                     stream: str = "") -> tuple[list[T], list[T]]:
    """Split into disjoint (train, eval) lists, deterministically for a seed.

    The eval size is ``round(eval_fraction * N)``, but at least 1 when ``eval_fraction > 0`` and
    N ≥ 2 (a requested eval split should not silently vanish on small data) and at most N − 1 (so
    train is never empty). Both parts keep the input order, so a split of sorted data stays sorted.

    Args:
        items: the pairs (or anything) to split; not modified.
        eval_fraction: share held out for evaluation, in [0, 1).
        seed: seed of the permutation that picks the eval items.
        stream: a name that makes the draw independent of other draws with the same seed (e.g. noise
            injected with that seed, which draws the same permutation: the flipped pairs would be the
            held-out ones). Empty = `random.Random(seed)` itself.

    Returns:
        ``(train, eval)``; together they hold every item exactly once. ``eval_fraction == 0`` gives
        an empty eval list.

    Raises:
        ConfigError: `eval_fraction` outside [0, 1).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1) (got {eval_fraction})")
    n = len(items)
    n_eval = round(eval_fraction * n)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    chosen = set(random.Random(f"{stream}:{seed}" if stream else seed).sample(range(n), n_eval))
    train = [item for i, item in enumerate(items) if i not in chosen]
    held_out = [item for i, item in enumerate(items) if i in chosen]
    return train, held_out


def take(items: Sequence[T], n: int | None) -> list[T]:
    """The first `n` items (all of them when `n` is None or larger than the list).

    Raises:
        ConfigError: `n` is negative.
    """
    if n is None:
        return list(items)
    if n < 0:
        raise ConfigError(f"cannot take a negative number of pairs (got {n})")
    return list(items[:n])
