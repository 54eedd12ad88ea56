"""Noisy labels for the built-in verifiable task: an oracle, not the gold score, picks each pair's winner."""

from __future__ import annotations

import torch

from robalign.data.pairs import PreferencePair
from robalign.oracles.build import build_oracle
from robalign.oracles.oracles import PreferenceOracle


def verifiable_oracle(noise) -> PreferenceOracle:
    """An oracle from `noise`: a PreferenceOracle as is, else a `build_oracle` spec whose gold defaults to the
    verifiable checker ("flip:0.1" or "length:0.5" wrap "det:verifiable"; a dict without "gold" gets it)."""
    if isinstance(noise, PreferenceOracle):
        return noise
    if isinstance(noise, str) and not noise.startswith(("bt:", "det:")):
        noise = f"det:verifiable+{noise}"
    elif isinstance(noise, dict) and "gold" not in noise:
        noise = {"gold": "det:verifiable", **noise}
    return build_oracle(noise)


def relabel_pairs(pairs: list[PreferencePair], noise, seed: int) -> list[PreferencePair]:
    """The pairs with the winner the (observed, possibly misspecified) oracle `noise` samples.

    A pair the oracle reverses comes back flipped (`is_flipped=True`); every pair's `extra` records
    `oracle_prob` and `gold_prob`, both P(chosen ≻ rejected | prompt) for the row as stored. The label draws
    are seeded by `seed` alone, so the same pairs and seed give the same labels.
    """
    oracle = verifiable_oracle(noise)
    prompts = [p.prompt[0]["content"] for p in pairs]
    labels = oracle.sample(prompts, [p.chosen for p in pairs], [p.rejected for p in pairs],
                           torch.Generator().manual_seed(seed))
    out = []
    for pair, keep, obs, gold in zip(pairs, labels.y1_preferred.tolist(), labels.observed_prob.tolist(),
                                     labels.gold_prob.tolist()):
        pair = pair if keep else pair.flipped()
        pair.extra.update(oracle_prob=obs if keep else 1 - obs, gold_prob=gold if keep else 1 - gold)
        out.append(pair)
    return out
