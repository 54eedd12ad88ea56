"""Random log-linear instances for tests, examples and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robalign.loglinear.policy import LogLinearPolicy, adversarial_oracle, antisymmetric

__all__ = ["LogLinearInstance", "random_instance"]


@dataclass
class LogLinearInstance:
    """A policy with its ideal oracle P⋆ and an observed oracle P, |P − P⋆| ≤ ρ_obs pointwise.

    Attributes:
        policy: the engine; θ_ref = 0, uniform μ.
        p_star: [X, Y, Y] Bradley–Terry P⋆(y_i ≻ y_j | x) = σ(θ⋆ᵀ(ψ_i − ψ_j)) clipped to [δ, 1 − δ].
        p_observed: [X, Y, Y] P⋆ moved by ρ_obs toward the worse answer (`adversarial_oracle`).
        theta_star: [d] the θ⋆ behind P⋆.
    """

    policy: LogLinearPolicy
    p_star: torch.Tensor
    p_observed: torch.Tensor
    theta_star: torch.Tensor


def random_instance(
    num_prompts: int,
    num_responses: int,
    dim: int,
    *,
    seed: int = 0,
    feature_bound: float = 1.0,
    signal: float = 3.0,
    delta: float = 0.1,
    rho_observed: float = 0.05,
) -> LogLinearInstance:
    """Gaussian features rescaled so max ‖ψ‖ = B_ψ, a BT oracle from a random θ⋆, and its ρ-shift.

    Args:
        num_prompts, num_responses, dim: X, Y, d.
        seed: seeds a private generator (float64 throughout).
        feature_bound: B_ψ.
        signal: ‖θ⋆‖; larger gives more decisive preferences.
        delta: δ, the clip of P⋆ into [δ, 1 − δ] (the assumption δ ≤ P⋆ ≤ 1 − δ of arXiv 2602.20457).
        rho_observed: how far the observed oracle moves (must be < δ to stay inside (0, 1)).
    """
    if not 0.0 <= rho_observed < delta <= 0.5:
        raise ValueError("need 0 <= rho_observed < delta <= 0.5")
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(num_prompts, num_responses, dim, generator=generator, dtype=torch.float64)
    features = feature_bound * raw / raw.norm(dim=-1).max()
    theta_star = torch.randn(dim, generator=generator, dtype=torch.float64)
    theta_star = signal * theta_star / theta_star.norm()
    scores = features @ theta_star
    bt = torch.sigmoid(scores[:, :, None] - scores[:, None, :])
    # Clipping to a symmetric interval keeps P⋆ antisymmetric.
    p_star = antisymmetric(bt.clamp(delta, 1.0 - delta))
    return LogLinearInstance(
        policy=LogLinearPolicy(features),
        p_star=p_star,
        p_observed=adversarial_oracle(p_star, rho_observed),
        theta_star=theta_star,
    )
