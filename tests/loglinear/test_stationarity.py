"""Tests for robalign.loglinear.stationarity: the weak-convexity bound on the paper's example."""

from __future__ import annotations

import torch
from test_policy import F64, _one_thread  # noqa: F401 (autouse fixture)

from robalign.loglinear import LogLinearPolicy, sensitivity_weak_convexity_bound


def test_sensitivity_weak_convexity_bound_holds_on_the_example():
    """R + κ_R‖θ‖²/2 is convex on |θ| ≤ D (second differences ≥ 0), while R alone is not."""
    policy = LogLinearPolicy(torch.tensor([[[1.0], [0.0]]], dtype=F64))
    radius, step = 3.0, 1e-3
    kappa = sensitivity_weak_convexity_bound(1.0, radius)
    assert kappa == 16.0 + 4.0 * radius
    grid = torch.linspace(-radius, radius, 601, dtype=F64)
    values = torch.stack([policy.sensitivity_penalty(t.view(1)) for t in grid])
    shifted = torch.stack([policy.sensitivity_penalty((t + step).view(1)) for t in grid])
    back = torch.stack([policy.sensitivity_penalty((t - step).view(1)) for t in grid])
    second = (shifted - 2 * values + back) / step**2
    assert second.min() < 0
    assert (second + kappa).min() >= 0
