"""Optional proximal refinement of oracle-robust's output iterate θ_R (arXiv 2602.20457): K projected
stochastic gradient steps on L^W_ρ(θ) + ‖θ − θ_R‖²/(2 λ_env), from mini-batches of the run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robalign.methods.oracle_robust_iterates import project_weights_onto_ball, trainable


@dataclass
class ProxResult:
    """Steps taken, the last mini-batch residual, and whether it fell below ε_prox."""

    steps: int
    residual: float
    converged: bool


def proximal_refine_model(objective: Callable, model, batches: Sequence, *, steps: int, lam_env: float,
                          eps_prox: float, lr: float, centre: Sequence[torch.Tensor] | None = None,
                          radius: float | None = None) -> ProxResult:
    """K projected steps on objective(θ) + ‖θ − θ_R‖²/(2 λ_env) from θ_R = the model's current weights.

    A model's trainable weights, refined in place from mini-batch estimates of the gradient; the exact
    engine's counterpart is `robalign.loglinear.rscgd.proximal_refine_exact`.

    Args:
        objective: objective(model, batch) -> scalar whose gradient estimates ∇L^W_ρ (the R-SCGD surrogate).
        model: refined in place (its trainable parameters).
        batches: micro-batches cycled through, one per step.
        steps: K.
        lam_env: λ_env (< 1/κ makes the subproblem strongly convex).
        eps_prox: stop once the residual ‖θ − Proj(θ − η∇F)‖/η (‖∇F‖ without projection) is below it.
        lr: η.
        centre, radius: the projection ball (None: no projection).
    """
    params = [p for _, p in trainable(model)]
    anchor = [p.detach().clone() for p in params]
    residual = float("inf")
    for k in range(steps):
        value = objective(model, batches[k % len(batches)])
        value = value + sum((p - a).pow(2).sum() for p, a in zip(params, anchor)) / (2.0 * lam_env)
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            for p, g in zip(params, grads):
                p.sub_(lr * g)
            if radius:
                project_weights_onto_ball(params, centre, radius)
            residual = math.sqrt(sum(float((b - p).pow(2).sum()) for b, p in zip(before, params))) / lr
            if residual < eps_prox:  # the step is taken only when the point was not yet stationary
                for p, b in zip(params, before):
                    p.copy_(b)
                return ProxResult(k, residual, True)
    return ProxResult(steps, residual, False)
