"""Dataset noise injection: flip a chosen number of preference labels on purpose.

Three kinds, each flipping exactly ``k = round(rate * N)`` of the N pairs (fewer only for `length`,
when there are not enough candidates):

* ``flip``: the first k pairs of one seeded permutation. Because the permutation depends only on the
  seed and N, the flipped sets are nested across rates: every pair flipped at rate 0.1 is also
  flipped at 0.2 with the same seed, so a rate sweep changes one thing at a time.
* ``length``: candidates are the pairs whose chosen completion is shorter, in characters, than the
  rejected one (for message lists: the summed content length). Flipping them makes the data prefer
  the longer answer, like a length-biased judge. The k candidates flipped are the first ones in the
  same seeded permutation (random among candidates, nested across rates), not the shortest ones:
  picking by length would confound "biased towards length" with "only extreme pairs are wrong".
* ``margin``: needs ``chosen_score`` and ``rejected_score`` on every pair; flips the k pairs with the
  smallest ``|chosen_score − rejected_score|`` (the ones a tired annotator would get wrong), ties
  broken by the seeded permutation.

Every returned pair has `is_flipped` set, relative to the input labels: flipped pairs go through
`PreferencePair.flipped` (which toggles the flag), untouched pairs keep their flag, None becoming
False. The input list and its pairs are not modified.

Noise must never reach evaluation data. This module only works on the list it is given, so split
first (`robalign.data.split.train_eval_split`) and pass only the training list. Data that was noised as
a whole and split afterwards is evaluated through `clean_labels`, which undoes the recorded flips.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections.abc import Sequence

from robalign.data.pairs import PreferencePair, Text
from robalign.errors import ConfigError, DataError

NOISE_KINDS = ("flip", "length", "margin")


def inject_noise(pairs: Sequence[PreferencePair], kind: str, rate: float, seed: int) -> list[PreferencePair]:
    """Return a copy of `pairs` with ``round(rate * len(pairs))`` labels flipped.

    Args:
        pairs: training pairs (never an evaluation split).
        kind: one of `NOISE_KINDS`.
        rate: fraction of all pairs to flip, in [0, 1].
        seed: seed of the permutation that orders the pairs.

    Returns:
        New pairs in the input order, each with `is_flipped` set. Warns (`UserWarning`) when
        `length` noise has fewer candidates than requested; `inject_noise_with_info` reports it.

    Raises:
        ConfigError: unknown `kind` or `rate` outside [0, 1].
        DataError: `margin` noise on a pair without both scores.
    """
    noisy, info = inject_noise_with_info(pairs, kind, rate, seed)
    if info["warning"]:
        warnings.warn(info["warning"], stacklevel=2)
    return noisy


def inject_noise_with_info(
    pairs: Sequence[PreferencePair], kind: str, rate: float, seed: int
) -> tuple[list[PreferencePair], dict]:
    """`inject_noise`, also returning what was done.

    Returns:
        ``(noisy_pairs, info)`` where info has ``kind``, ``rate``, ``seed``, ``n_pairs``,
        ``requested`` (round(rate·N)), ``flipped`` (how many were flipped), ``candidates`` (number of
        eligible pairs; N except for `length`), ``flipped_indices`` (sorted input positions) and
        ``warning`` (a message, or None).
    """
    if kind not in NOISE_KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"noise rate must be in [0, 1] (got {rate!r})")
    n = len(pairs)
    requested = round(rate * n)
    order = random.Random(seed).sample(range(n), n)
    ranked = _ranked_candidates(pairs, kind, order)
    targets = set(ranked[:requested])
    warning = None
    if len(targets) < requested:
        warning = (
            f"{kind} noise: only {len(ranked)} of {n} pairs are candidates, fewer than the "
            f"{requested} requested at rate {rate}; flipped all {len(ranked)}"
        )
    noisy = [pair.flipped() if i in targets else _untouched(pair) for i, pair in enumerate(pairs)]
    info = {
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "n_pairs": n,
        "requested": requested,
        "flipped": len(targets),
        "candidates": len(ranked),
        "flipped_indices": sorted(targets),
        "warning": warning,
    }
    return noisy, info


def _ranked_candidates(pairs: Sequence[PreferencePair], kind: str, order: list[int]) -> list[int]:
    """Indices of the pairs that may be flipped, in the order they get flipped."""
    if kind == "flip":
        return order
    if kind == "length":
        return [i for i in order if completion_length(pairs[i].chosen) < completion_length(pairs[i].rejected)]
    _require_scores(pairs)
    position = {index: pos for pos, index in enumerate(order)}

    def closeness(i: int) -> tuple[float, int]:
        return abs(pairs[i].chosen_score - pairs[i].rejected_score), position[i]

    return sorted(range(len(pairs)), key=closeness)


def unscored(pairs: Sequence[PreferencePair]) -> list[int]:
    """Positions of the pairs that lack a chosen or rejected score, which `margin` noise needs."""
    return [i for i, pair in enumerate(pairs) if pair.chosen_score is None or pair.rejected_score is None]


def _require_scores(pairs: Sequence[PreferencePair]) -> None:
    missing = unscored(pairs)
    if missing:
        i = missing[0]
        raise DataError(
            "pairs",
            i + 1,
            f"pair {pairs[i].id or i + 1!r} has no chosen_score/rejected_score",
            "margin noise needs both scores on every row; add them or use flip noise",
        )


def _untouched(pair: PreferencePair) -> PreferencePair:
    # A copy, so callers can edit the noisy list without reaching back into the clean one.
    return dataclasses.replace(pair, is_flipped=bool(pair.is_flipped), extra=dict(pair.extra))


def completion_length(text: Text) -> int:
    """Characters in a completion: the string, or the summed content of its messages."""
    if isinstance(text, str):
        return len(text)
    return sum(len(message.get("content", "")) for message in text)


def clean_labels(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], int]:
    """The pairs with every recorded corruption undone (`is_flipped` True -> swapped back, flag False),
    and how many were restored. Held-out evaluation is against the true label, never the injected one."""
    out = [p.flipped() if p.is_flipped else p for p in pairs]
    return out, sum(bool(p.is_flipped) for p in pairs)
