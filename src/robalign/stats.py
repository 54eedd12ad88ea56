"""Intervals for held-out accuracies: paired by held-out pair within a seed, then over seeds.

Two runs evaluated on the same held-out pairs (the cells of one seed of a sweep) are compared pair by pair:
the difference of their accuracies is the mean of per-pair differences of correctness, whose sampling noise
comes only from the pairs on which they disagree. Over seeds (each seed draws its own training and
held-out pairs, noise and data order) the bootstrap resamples seeds, then pairs within each seed.
"""

from __future__ import annotations

import torch


def correctness(margins: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-pair accuracy of an implicit-reward margin: 1 when > 0, 0.5 on a tie, 0 otherwise.

    The one definition of "the model prefers the chosen answer": held-out accuracies, the training-time
    `rewards/accuracies` and the `train/fit_*` shares all count a tie half, so chance is 0.5 and a policy equal
    to its reference (h = 0 on every pair at step 0) scores 0.5, not 0 (TRL's `rewards/accuracies` counts it 0).
    """
    return (margins > 0).to(dtype) + 0.5 * (margins == 0).to(dtype)


def hierarchical_bootstrap(per_seed: list[torch.Tensor], *, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> dict:
    """Mean of per-pair values (e.g. correctness differences) over seeds, with a percentile interval.

    Args:
        per_seed: one [n_s] tensor of per-pair values per seed.
        n_boot: resamples; each draws seeds with replacement, then pairs with replacement within each drawn
            seed, and averages the per-seed means.
    Returns:
        {"mean", "low", "high", "seeds", "pairs"}; with one seed the interval is over pairs only.
    """
    if not per_seed:
        raise ValueError("hierarchical_bootstrap: no values")
    values = [v.double().flatten() for v in per_seed]
    gen = torch.Generator().manual_seed(seed)
    k = len(values)
    stats = torch.empty(n_boot, dtype=torch.float64)
    for b in range(n_boot):
        picks = torch.randint(k, (k,), generator=gen) if k > 1 else torch.zeros(1, dtype=torch.long)
        means = []
        for s in picks.tolist():
            v = values[s]
            means.append(v[torch.randint(len(v), (len(v),), generator=gen)].mean())
        stats[b] = torch.stack(means).mean()
    alpha = (1 - level) / 2
    low, high = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return {"mean": float(torch.stack([v.mean() for v in values]).mean()), "low": low, "high": high,
            "seeds": k, "pairs": sum(len(v) for v in values)}


# Two-sided 95 % quantiles of Student's t, t(0.975; df) for df = 1…30 (beyond, the normal's 1.960 is within 4 %).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def seed_t_interval(per_seed: list[torch.Tensor]) -> dict | None:
    """95 % t-interval of the mean over seeds of each seed's mean (None with fewer than 2 seeds).

    The bootstrap above resamples seeds as if they were many; with three seeds that understates how much a
    fourth one could differ, so reports give this interval beside it: mean ± t(0.975; k − 1) · sd / √k over
    the k per-seed means, which treats the held-out noise within a seed as part of the seed-to-seed spread.
    """
    means = torch.stack([v.double().flatten().mean() for v in per_seed])
    k = len(means)
    if k < 2:
        return None
    t = _T975[k - 2] if k - 1 <= len(_T975) else 1.960
    half = t * means.std(unbiased=True).item() / k ** 0.5
    mean = means.mean().item()
    return {"mean": mean, "low": mean - half, "high": mean + half, "seeds": k}

