import math

import pytest
import torch

from robalign.stats import correctness, hierarchical_bootstrap


def test_correctness_counts_ties_half():
    assert correctness(torch.tensor([1.0, 0.0, -2.0])).tolist() == [1.0, 0.5, 0.0]


def test_one_seed_interval_matches_the_normal_approximation_of_a_mean():
    gen = torch.Generator().manual_seed(1)
    diffs = (torch.rand(2000, generator=gen) < 0.1).double() - (torch.rand(2000, generator=gen) < 0.05).double()
    out = hierarchical_bootstrap([diffs], n_boot=4000, seed=3)
    se = diffs.std().item() / math.sqrt(len(diffs))
    assert out["mean"] == pytest.approx(diffs.mean().item())
    assert out["low"] == pytest.approx(out["mean"] - 1.96 * se, abs=0.25 * se)
    assert out["high"] == pytest.approx(out["mean"] + 1.96 * se, abs=0.25 * se)


def test_seed_to_seed_spread_widens_the_interval():
    gen = torch.Generator().manual_seed(2)
    same = [torch.randn(500, generator=gen) * 0.1 + 0.5 for _ in range(3)]
    spread = [torch.randn(500, generator=gen) * 0.1 + c for c in (0.0, 0.5, 1.0)]
    narrow = hierarchical_bootstrap(same, n_boot=1000)
    wide = hierarchical_bootstrap(spread, n_boot=1000)
    assert wide["mean"] == pytest.approx(0.5, abs=0.02)
    assert (wide["high"] - wide["low"]) > 10 * (narrow["high"] - narrow["low"])
    assert wide["seeds"] == 3 and wide["pairs"] == 1500


def test_seed_t_interval_is_mean_plus_minus_t_sd_over_root_k():
    from robalign.stats import seed_t_interval

    per_seed = [torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0, 0.5, 0.5])]
    means = [0.5, 1.0, 0.25]
    mean = sum(means) / 3
    sd = (sum((m - mean) ** 2 for m in means) / 2) ** 0.5
    ci = seed_t_interval(per_seed)
    assert ci["mean"] == pytest.approx(mean)
    assert ci["high"] - mean == pytest.approx(4.303 * sd / 3 ** 0.5, rel=1e-4)
    assert ci["low"] == pytest.approx(2 * mean - ci["high"])
    assert seed_t_interval(per_seed[:1]) is None


def test_seed_t_quantiles_match_scipy():
    from scipy import stats  # a dev dependency: this check must run, not skip

    from robalign.stats import _T975

    for df, t in enumerate(_T975, start=1):
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)
