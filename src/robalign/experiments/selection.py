"""Early stopping as a user could do it: the evaluation picked on a noisy validation split, scored on clean pairs.

A sweep cell keeps the per-pair margins of every evaluation on its clean held-out pairs. Splitting those
pairs in two — a validation half whose labels get the cell's own flip rate, as a split of the user's noisy
data would have them, and a test half kept clean — gives, with no extra training, exactly what
`train.load_best_model_at_end` would have kept had the run evaluated on that noisy validation half: the
evaluation with the best noisy-validation accuracy (the first, on a tie), then its accuracy on the clean
test half. Every method of one seed gets the same halves and the same simulated flips, so the comparison
between methods stays paired.
"""

from __future__ import annotations

import torch

from robalign.stats import correctness

SPLIT_SEED = 7_777  # offsets the seed of the halves from the seeds of training, data and noise


def halves(n_pairs: int, seed: int, rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(validation indices, test indices, validation flip mask) for one seed; the halves split the pairs."""
    gen = torch.Generator().manual_seed(SPLIT_SEED + seed)
    order = torch.randperm(n_pairs, generator=gen)
    val, test = order[: n_pairs // 2], order[n_pairs // 2:]
    flipped = torch.rand(len(val), generator=gen, dtype=torch.float64) < rate
    return val, test, flipped


def selected_evaluation(margins: torch.Tensor, val: torch.Tensor, flipped: torch.Tensor) -> int:
    """Row of `margins` ([evaluations, pairs]) with the best accuracy on the validation pairs against their
    noisy labels (a flipped label is right when the margin prefers the other answer); the first on a tie."""
    c = correctness(margins[:, val])
    noisy = torch.where(flipped[None, :], 1.0 - c, c).mean(dim=1)
    return int(torch.nonzero(noisy == noisy.max())[0, 0])


def stopped_correctness(margins: torch.Tensor, seed: int, rate: float) -> tuple[torch.Tensor, int]:
    """(per-pair clean correctness on the test half at the selected evaluation, that evaluation's row)."""
    val, test, flipped = halves(margins.shape[1], seed, rate)
    row = selected_evaluation(margins, val, flipped)
    return correctness(margins[row, test]), row


def last_correctness(margins: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-pair clean correctness on the same test half at the last evaluation."""
    _, test, _ = halves(margins.shape[1], seed, 0.0)
    return correctness(margins[-1, test])
