"""Tests for robalign.methods.oracle_robust_iterates: the projection onto the ball around θ_ref."""

import pytest
import torch

from robalign.methods.oracle_robust_iterates import project_weights_onto_ball


def test_projecting_weights_leaves_interior_points_alone():
    c = [torch.zeros(3)]
    p = [torch.tensor([0.3, 0.0, 0.4])]
    assert project_weights_onto_ball(p, c, 1.0) == (False, pytest.approx(0.5))
    assert torch.equal(p[0], torch.tensor([0.3, 0.0, 0.4]))
    assert project_weights_onto_ball(p, c, 0.25)[0] and torch.allclose(p[0], torch.tensor([0.15, 0.0, 0.2]))
