"""Per-pair terms of the online objectives: SAIL (Ding et al. 2024, arXiv 2406.15567)
and oracle-robust R-SCGD (Li, Gaur, Aggarwal 2026, arXiv 2602.20457).

Pure functions of margins and sequence log-probs; this module imports only torch. Shapes: B = pairs
in the micro-batch. `h` is always the DPO log-ratio margin of the pair *as labelled* (winner first),
`h = [lp_θ(y_w) − lp_ref(y_w)] − [lp_θ(y_l) − lp_ref(y_l)]`; swapping the two responses negates it.

Every batch loss here is a mean over the B pairs of the micro-batch, and every extra term (self-label,
score function, sensitivity penalty) is a per-pair term added before that mean. So gradient
accumulation (`loss / grad_accum` per micro-batch) scales the extra terms exactly like the main loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Route codes of SAIL: which responses a pair uses and who labels them.
DPO, DP, PP, PR = 0, 1, 2, 3
ROUTE_NAMES = ("dpo", "dp", "pp", "pr")

AllSum = Callable[[Tensor], Tensor]  # sums a tensor over the processes of a data-parallel run


def draw_routes(u: Tensor, r: float, p: float, g: float) -> Tensor:
    """SAIL route of each example from uniforms u ∈ [0, 1), [B] -> long [B].

    DPO with probability 1 − r − p − g, DP with r, PP with p, PR with g (in that order on [0, 1)).
    """
    q = 1.0 - r - p - g
    edges = torch.tensor([q, q + r, q + r + p], dtype=u.dtype, device=u.device)
    return torch.bucketize(u, edges, right=True)


def self_label(h: Tensor, beta: float, u: Tensor) -> Tensor:
    """The policy's own Bradley–Terry draw on (y1, y2): True where y1 stays the winner, [B] bool.

    y1 wins with probability σ(βh(y1, y2)), i.e. the pair is swapped with probability 1 − σ(βh).
    No gradient flows through the draw.
    """
    return u < torch.sigmoid(beta * h.detach())  # SAIL-DP / SAIL-PP labels


def signed_margin(h: Tensor, y1_preferred: Tensor) -> Tensor:
    """h(y_w, y_l) from h(y1, y2) and the label: h where y1 won, −h where it lost, [B]."""
    return torch.where(y1_preferred, h, -h)


def dpo_term(h_w: Tensor, beta: float) -> Tensor:
    """softplus(−β h_w) = −log σ(β h_w), [B]."""
    return F.softplus(-beta * h_w)


def self_label_term(h_w: Tensor, beta: float, coef: Tensor | float) -> Tensor:
    """−½·coef·(log σ(β h_w))², [B] (SAIL-DP and SAIL-PP).

    It is the score-function term of the self-labelling draw: with ℓ = −log σ(βh_w) and the label drawn
    from σ(βh_w), ℓ·∇log σ(βh_w) = −½ ∇(log σ(βh_w))².
    """
    return -0.5 * coef * F.logsigmoid(beta * h_w).pow(2)  # SAIL-DP/PP extra term


def batch_baseline(per_sample: Tensor, mask: Tensor | None = None, all_sum: AllSum | None = None) -> Tensor:
    """b = mean of the detached per-sample losses over the masked (sampled) examples; 0 when none.

    `all_sum` sums a tensor over the processes of a data-parallel run, so that b is the mean over the
    global micro-batch (as one process would compute it); None = this process's batch only.
    """
    values = per_sample.detach()
    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    sums = torch.stack([(values * weights).sum(), weights.sum()])
    if all_sum is not None:
        sums = all_sum(sums)
    return sums[0] / sums[1].clamp_min(1.0)


def score_function_term(per_sample: Tensor, logp_sum: Tensor, coef: Tensor | float,
                        mask: Tensor | None = None, all_sum: AllSum | None = None) -> tuple[Tensor, Tensor]:
    """coef·(ℓ_i.detach() − b)·(lp_θ(y1) + lp_θ(y2)) for responses drawn from π_θ, [B].

    Its gradient is coef·(ℓ_i − b)·∇(lp_θ(y1) + lp_θ(y2)): the derivative of the sampling distribution
    π_θ ⊗ π_θ, with the batch-mean baseline b as control variate (b is a constant, so a constant shift
    of every ℓ_i leaves the term unchanged).

    Args:
        per_sample: [B] ℓ_i (its value is used, never its gradient).
        logp_sum: [B] lp_θ(y1) + lp_θ(y2), summed completion log-probs with gradient.
        coef: scalar or [B] weight.
        mask: [B] bool, the examples whose responses were sampled; b averages over them only and the
            term is 0 elsewhere. None: all examples.
        all_sum: see `batch_baseline`.

    Returns:
        ([B] term, scalar baseline b).
    """
    b = batch_baseline(per_sample, mask, all_sum)
    term = coef * (per_sample.detach() - b) * logp_sum  # SAIL / R-SCGD score-function term
    if mask is not None:
        term = torch.where(mask, term, torch.zeros_like(term))
    return term, b


def sensitivity_penalty(h: Tensor, beta: float, rho: float) -> Tensor:
    """ρβ|h(y1, y2)|, [B]: the closed-form worst case over the oracle uncertainty set (arXiv 2602.20457)."""
    return rho * beta * h.abs()  # L^W_ρ = L_SAIL + ρβ E|h|, arXiv 2602.20457


@dataclass(frozen=True)
class OnlineLossOutput:
    """What the online losses return; every [B] field is per pair.

    Attributes:
        loss: scalar, the micro-batch mean of `per_pair`.
        per_pair: [B] everything added up (with gradient).
        h_w: [B] detached labelled margin h(y_w, y_l).
        base: [B] detached softplus(−βh_w).
        extra: [B] detached self-label (SAIL) or sensitivity penalty (oracle-robust) term.
        score: [B] detached score-function term values.
        baseline: scalar detached b.
    """

    loss: Tensor
    per_pair: Tensor
    h_w: Tensor
    base: Tensor
    extra: Tensor
    score: Tensor
    baseline: Tensor


def sail_loss(h: Tensor, y1_preferred: Tensor, logp_sum: Tensor, routes: Tensor, *, beta: float,
              coef_dp: float, coef_pp: float, coef_pr: float, all_sum: AllSum | None = None) -> OnlineLossOutput:
    """SAIL per pair (arXiv 2406.15567), by route: DPO softplus(−βh_w); DP + self-label term; PP + self-label
    term + score-function term; PR + score-function term. The baseline b averages ℓ_i over PP ∪ PR.

    Args:
        h: [B] margin h(y1, y2) of the pair in batch order (dataset chosen first for DPO / DP rows).
        y1_preferred: [B] bool labels (all True for DPO rows).
        logp_sum: [B] lp_θ(y1) + lp_θ(y2) (used on PP / PR rows only).
        routes: [B] codes DPO / DP / PP / PR.
        beta, coef_dp, coef_pp, coef_pr: β and the route coefficients (`SailParams`).
        all_sum: sums over data-parallel processes for the baseline (see `batch_baseline`).
    """
    h_w = signed_margin(h, y1_preferred)
    base = dpo_term(h_w, beta)
    coef_self = torch.where(routes == DP, coef_dp, torch.where(routes == PP, coef_pp, 0.0)).to(base.dtype)
    coef_sf = torch.where(routes == PP, coef_pp, torch.where(routes == PR, coef_pr, 0.0)).to(base.dtype)
    sampled = (routes == PP) | (routes == PR)
    extra = self_label_term(h_w, beta, coef_self)  # exactly 0 where the coefficient is 0
    score, b = score_function_term(base, logp_sum, coef_sf, sampled, all_sum)
    per_pair = base + extra + score
    return OnlineLossOutput(per_pair.mean(), per_pair, h_w.detach(), base.detach(), extra.detach(),
                            score.detach(), b)


def oracle_robust_loss(h: Tensor, y1_preferred: Tensor, logp_sum: Tensor, *, beta: float, rho: float,
                       sf_coef: float, all_sum: AllSum | None = None) -> OnlineLossOutput:
    """R-SCGD surrogate (arXiv 2602.20457): mean_i[ℓ_i + sf_coef·(ℓ_i.detach() − b)(lp_θ(y1) + lp_θ(y2))],
    ℓ_i = softplus(−β h(y_w, y_l)) + ρβ|h(y1, y2)|, b = mean_i ℓ_i.

    Args:
        h: [B] margin h(y1, y2).
        y1_preferred: [B] bool labels of the observed oracle.
        logp_sum: [B] lp_θ(y1) + lp_θ(y2).
        beta, rho, sf_coef: β, ρ and the score-function weight (1: the paper's gradient, 0: the
            behaviour-policy approximation).
        all_sum: sums over data-parallel processes for the baseline (see `batch_baseline`).
    """
    h_w = signed_margin(h, y1_preferred)
    base = dpo_term(h_w, beta)
    penalty = sensitivity_penalty(h, beta, rho)  # |h(y1, y2)| = |h(y_w, y_l)|
    per_sample = base + penalty  # ℓ_i
    score, b = score_function_term(per_sample, logp_sum, sf_coef, all_sum=all_sum)
    per_pair = per_sample + score
    return OnlineLossOutput(per_pair.mean(), per_pair, h_w.detach(), base.detach(), penalty.detach(),
                            score.detach(), b)
