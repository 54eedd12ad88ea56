"""Tests for robalign.methods.oracle_robust_prox: the proximal refinement of the output iterate."""

import copy
import math

import torch
from test_oracle_robust import _method, setup  # noqa: F401 (fixture)

from robalign.methods.oracle_robust_iterates import trainable
from robalign.methods.oracle_robust_prox import proximal_refine_model


def test_proximal_refinement_stops_at_eps_and_stays_near_the_anchor(setup):  # noqa: F811 (the fixture imported above)
    policy, ref, batch, tok = setup
    policy = copy.deepcopy(policy)
    method = _method(tok)
    objective = lambda m, b: method.objective(m, ref, b)[0].loss  # noqa: E731
    before = [p.detach().clone() for _, p in trainable(policy)]
    res = proximal_refine_model(objective, policy, [batch], steps=3, lam_env=1.0, eps_prox=float("inf"), lr=0.1)
    assert res.converged and res.steps == 0
    assert all(torch.equal(a, p) for a, (_, p) in zip(before, trainable(policy)))
    res = proximal_refine_model(objective, policy, [batch], steps=2, lam_env=1e-3, eps_prox=0.0, lr=1e-4)
    assert not res.converged and res.steps == 2 and res.residual > 0
    moved = math.sqrt(sum(float((a - p.detach()).pow(2).sum()) for a, (_, p) in zip(before, trainable(policy))))
    assert 0 < moved
