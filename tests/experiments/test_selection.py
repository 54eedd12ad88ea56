"""Early stopping on a noisy validation half, checked against a brute-force loop."""

import torch

from robalign.experiments.selection import halves, last_correctness, selected_evaluation, stopped_correctness


def test_halves_partition_the_pairs_and_the_test_half_does_not_depend_on_the_rate():
    val, test, flipped = halves(101, seed=3, rate=0.4)
    assert sorted(torch.cat([val, test]).tolist()) == list(range(101)) and len(val) == 50
    val2, test2, flipped2 = halves(101, seed=3, rate=0.0)
    assert torch.equal(test, test2) and torch.equal(val, val2) and not flipped2.any()
    assert 0.2 < flipped.double().mean() < 0.6
    assert not torch.equal(halves(101, seed=4, rate=0.4)[1], test)


def _brute_force(margins, val, flipped):
    best, pick = -1.0, None
    for row in range(margins.shape[0]):
        right = 0.0
        for j, i in enumerate(val.tolist()):
            m = margins[row, i].item()
            c = 1.0 if m > 0 else 0.5 if m == 0 else 0.0
            right += (1.0 - c) if flipped[j] else c
        if right / len(val) > best:
            best, pick = right / len(val), row
    return pick


def test_selected_evaluation_matches_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        margins = torch.randn(6, 40, generator=gen)
        margins[0] = 0.0  # a step-0 row: every pair a tie
        val, _, flipped = halves(40, trial, 0.3)
        assert selected_evaluation(margins, val, flipped) == _brute_force(margins, val, flipped)


def test_stopping_keeps_the_clean_peak_when_the_noisy_half_still_ranks_it_first():
    # Three evaluations: rise, peak, memorised (every pair's margin shrinks towards the flipped side).
    n = 400
    truth = torch.ones(n)
    rows = torch.stack([truth * 0.0, truth, -truth])
    rows[2, : n // 4] = 1.0  # the last evaluation is right on a quarter of the pairs only
    stopped, row = stopped_correctness(rows, seed=0, rate=0.2)
    assert row == 1 and stopped.mean().item() == 1.0
    assert last_correctness(rows, seed=0).mean().item() < 0.5
