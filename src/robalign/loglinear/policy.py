"""Exact log-linear policies, computed by enumeration: π_θ(y|x) ∝ exp(θᵀψ(x, y)), the
policy class of arXiv 2602.20457's analysis.

A policy over finite prompts X and responses Y with features ψ ∈ R^{X×Y×d}:

    π_θ(y|x) = exp(θᵀψ(x,y)) / Σ_y' exp(θᵀψ(x,y')),        π_ref = π_{θ_ref}.

Every expectation below is an exact finite sum with weights μ(x)·π_θ(y1|x)·π_θ(y2|x), so the losses
are exact and autograd gives exact gradients, including the score-function part that comes from the
weights depending on θ (the objectives are on-policy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LogLinearPolicy", "adversarial_oracle", "antisymmetric"]


def check_beta_rho(beta: float, rho: float | None = None) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # ρ outside [0, 0.5) is an error, not a warning (the uncertainty set would be vacuous).
    if rho is not None and not 0.0 <= rho < 0.5:
        raise ValueError(f"rho must be in [0, 0.5), got {rho}")


def antisymmetric(p_upper: torch.Tensor) -> torch.Tensor:
    """Complete P(y_i ≻ y_j | x) from its strict upper triangle: P[x,j,i] = 1 − P[x,i,j], P[x,i,i] = ½.

    Args:
        p_upper: [X, Y, Y]; only entries with i < j are read.

    Returns:
        [X, Y, Y] antisymmetric preference matrix (diagonal ½).
    """
    num_responses = p_upper.shape[-1]
    upper = torch.ones(num_responses, num_responses, dtype=torch.bool, device=p_upper.device).triu(1)
    full = torch.where(upper, p_upper, 1.0 - p_upper.transpose(-1, -2))
    eye = torch.eye(num_responses, dtype=torch.bool, device=p_upper.device)
    return full.masked_fill(eye, 0.5)


def adversarial_oracle(p_star: torch.Tensor, rho: float) -> torch.Tensor:
    """The pointwise adversary (arXiv 2602.20457): move P⋆ by ρ toward the worse answer of each pair.

    P(y_i ≻ y_j) = P⋆ − ρ·sign(P⋆ − ½), which stays antisymmetric and, when ρ < δ ≤ P⋆ ≤ 1 − δ, in (0, 1).

    Args:
        p_star: [X, Y, Y] antisymmetric ideal oracle.
        rho: shift, in [0, 0.5).

    Returns:
        [X, Y, Y] observed oracle.
    """
    check_beta_rho(1.0, rho)
    return p_star - rho * torch.sign(p_star - 0.5)


class LogLinearPolicy:
    """π_θ(y|x) ∝ exp(θᵀψ(x,y)) on finite X × Y, exact by enumeration.

    Args:
        features: ψ, [X, Y, d] (float64 recommended; the dtype of every computation).
        prompt_weights: μ, [X] non-negative; normalised here. Uniform when None.
        theta_ref: θ_ref, [d]; the reference policy is π_ref = π_{θ_ref}. Zeros when None.
    """

    def __init__(
        self,
        features: torch.Tensor,
        prompt_weights: torch.Tensor | None = None,
        theta_ref: torch.Tensor | None = None,
    ):
        if features.dim() != 3 or not features.is_floating_point():
            raise ValueError(f"features must be a float [X, Y, d] tensor, got {tuple(features.shape)}")
        num_prompts, _, dim = features.shape
        self.features = features
        if prompt_weights is None:
            prompt_weights = torch.ones(num_prompts)
        prompt_weights = prompt_weights.to(features)
        if prompt_weights.shape != (num_prompts,) or (prompt_weights < 0).any() or prompt_weights.sum() <= 0:
            raise ValueError("prompt_weights must be [X], non-negative, with a positive sum")
        self.prompt_weights = prompt_weights / prompt_weights.sum()
        theta_ref = torch.zeros(dim) if theta_ref is None else theta_ref
        if theta_ref.shape != (dim,):
            raise ValueError(f"theta_ref must have shape [{dim}], got {tuple(theta_ref.shape)}")
        self.theta_ref = theta_ref.to(features)

    @property
    def num_prompts(self) -> int:
        return self.features.shape[0]

    @property
    def num_responses(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def feature_bound(self) -> float:
        """B_ψ = max_{x,y} ‖ψ(x,y)‖, the constant in the weak-convexity bounds of arXiv 2602.20457."""
        return self.features.norm(dim=-1).max().item()

    def _theta(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape [{self.dim}], got {tuple(theta.shape)}")
        return theta.to(self.features.dtype)

    def _p(self, p_star: torch.Tensor) -> torch.Tensor:
        shape = (self.num_prompts, self.num_responses, self.num_responses)
        if p_star.shape != shape:
            raise ValueError(f"p_star must have shape {list(shape)}, got {tuple(p_star.shape)}")
        return p_star.to(self.features.dtype)

    def log_probs(self, theta: torch.Tensor) -> torch.Tensor:
        """log π_θ(y|x), [X, Y]; each row log-sum-exps to 0."""
        return torch.log_softmax(self.features @ self._theta(theta), dim=-1)

    def margins(self, theta: torch.Tensor) -> torch.Tensor:
        """h_θ[x,i,j] = (θ − θ_ref)ᵀ(ψ(x,i) − ψ(x,j)), [X, Y, Y].

        This is the DPO log-ratio margin [lp_θ(y_i) − lp_ref(y_i)] − [lp_θ(y_j) − lp_ref(y_j)]
        (Rafailov et al. 2023, arXiv 2305.18290): the log-normalisers of π_θ and π_ref cancel within one prompt. β stays outside.
        """
        scores = self.features @ (self._theta(theta) - self.theta_ref)  # log-linear h_θ, arXiv 2602.20457
        return scores[:, :, None] - scores[:, None, :]

    def pair_weights(self, theta: torch.Tensor) -> torch.Tensor:
        """μ(x)·π_θ(y_i|x)·π_θ(y_j|x), [X, Y, Y]: the on-policy pair distribution (ties i = j included).

        Differentiable in θ, which is what puts the score-function term into autograd gradients.
        """
        probs = self.log_probs(theta).exp()
        return self.prompt_weights[:, None, None] * probs[:, :, None] * probs[:, None, :]

    def sail_loss(self, theta: torch.Tensor, p_star: torch.Tensor, *, beta: float) -> torch.Tensor:
        """L_SAIL(θ) = E_{x, y1,y2 ~ π_θ}[P·softplus(−βh) + (1 − P)·softplus(βh)] (SAIL's objective,
        Ding et al. 2024, arXiv 2406.15567, in the form of arXiv 2602.20457).

        The label y1 ≻ y2 is drawn with probability P = p_star[x, y1, y2]; the bracket is that draw's
        expected DPO loss softplus(−β h(y_w, y_l)).

        Args:
            theta: [d].
            p_star: [X, Y, Y], P(y_i ≻ y_j | x); the diagonal is irrelevant (h = 0 gives log 2).
            beta: β > 0.

        Returns:
            Scalar tensor.
        """
        check_beta_rho(beta)
        h, p = self.margins(theta), self._p(p_star)
        per_pair = p * F.softplus(-beta * h) + (1.0 - p) * F.softplus(beta * h)
        return (self.pair_weights(theta) * per_pair).sum()

    def sensitivity_penalty(self, theta: torch.Tensor, *, smoothing: float = 0.0) -> torch.Tensor:
        """R(θ) = E_{x, y1,y2 ~ π_θ}|h_θ(x,y1,y2)|, the sensitivity penalty of arXiv 2602.20457, a scalar.

        Args:
            theta: [d].
            smoothing: τ ≥ 0. When positive, |h| is replaced by sqrt(h² + τ²) − τ, which is smooth and
                within τ of |h| everywhere (so R moves by at most τ). Used only by inner prox solves.
        """
        h = self.margins(theta)
        # sqrt(h² + τ²) with τ = 0 has a NaN gradient at the ties h ≡ 0, hence the two branches.
        abs_h = h.abs() if smoothing == 0.0 else torch.sqrt(h * h + smoothing**2) - smoothing
        return (self.pair_weights(theta) * abs_h).sum()

    def robust_loss(
        self, theta: torch.Tensor, p_star: torch.Tensor, *, beta: float, rho: float, smoothing: float = 0.0
    ) -> torch.Tensor:
        """Closed-form worst case L^W_ρ(θ) = L_SAIL(θ) + ρβ·R(θ) (the closed form of arXiv 2602.20457).

        Exact, and equal to `worst_case_loss`, under the paper's assumption ρ < δ ≤ P⋆ ≤ 1 − δ, i.e. when
        every interval [P⋆ − ρ, P⋆ + ρ] lies inside [0, 1]. Where an interval is cut by [0, 1] the true
        worst case is smaller and this is an upper bound on it.

        Args:
            theta: [d].
            p_star: [X, Y, Y] antisymmetric centre of the uncertainty set.
            beta: β > 0.
            rho: ρ ∈ [0, 0.5).
            smoothing: τ for R (see `sensitivity_penalty`); 0 gives the exact loss.

        Returns:
            Scalar tensor.
        """
        check_beta_rho(beta, rho)
        penalty = self.sensitivity_penalty(theta, smoothing=smoothing)
        return self.sail_loss(theta, p_star, beta=beta) + rho * beta * penalty  # L^W_ρ = L_SAIL + ρβR

    def worst_case_loss(
        self, theta: torch.Tensor, p_star: torch.Tensor, *, beta: float, rho: float
    ) -> torch.Tensor:
        """max of L_SAIL over {P : |P − P⋆| ≤ ρ pointwise, 0 ≤ P ≤ 1, P[j,i] = 1 − P[i,j]}, by brute force.

        Written without the closed form: for each prompt and unordered pair i < j the two ordered terms
        (i,j) and (j,i) of L_SAIL depend on the one number P = P(y_i ≻ y_j), affinely, so the maximum over
        its interval [max(P⋆ − ρ, 0), min(P⋆ + ρ, 1)] is at an endpoint: evaluate both and keep the
        larger. Pairs are independent, so the per-pair maxima add up to the global one. Ties (i = j)
        contribute log 2 whatever P is. Valid for any P⋆ in [0, 1]; it equals `robust_loss` when
        ρ < δ ≤ P⋆ ≤ 1 − δ and is ≤ it otherwise (strictly where a cut interval has h ≠ 0).

        Args:
            theta: [d].
            p_star: [X, Y, Y]; only the strict upper triangle P⋆[x, i<j] is read.
            beta: β > 0.
            rho: ρ ∈ [0, 0.5).

        Returns:
            Scalar tensor.
        """
        check_beta_rho(beta, rho)
        h, weights, p = self.margins(theta), self.pair_weights(theta), self._p(p_star)
        upper = torch.ones_like(h[0], dtype=torch.bool).triu(1)

        def pair_totals(p_upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # [X,Y,Y] totals per unordered pair (upper triangle), [X,Y] tie terms
            full = antisymmetric(p_upper)
            ordered = weights * (full * F.softplus(-beta * h) + (1.0 - full) * F.softplus(beta * h))
            return (ordered + ordered.transpose(-1, -2)) * upper, ordered.diagonal(dim1=-2, dim2=-1)

        low, ties = pair_totals((p - rho).clamp(0.0, 1.0))
        high, _ = pair_totals((p + rho).clamp(0.0, 1.0))
        return torch.maximum(low, high).sum() + ties.sum()
