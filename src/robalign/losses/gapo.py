"""GAPO's pure mathematics (Cho, Kim, Kim 2026, arXiv 2602.04909): the anchor step δ, the anchor-gap loss, AUROC.

Everything here is a function of tensors and hyperparameters and imports only torch; the model plumbing
(which weights, how the anchor forward runs, data parallelism) lives in `robalign.methods.gapo`.

Shapes: B = number of pairs. Margins m are [B]; the anchor step is a list of tensors shaped like the
scoped weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def probe_loss(margin: Tensor, *, beta: float, gamma: float) -> Tensor:
    """L_probe = mean_i softplus(−(β m_i − γ)), the SimPO-shaped loss whose gradient picks the anchor."""
    return F.softplus(-(beta * margin - gamma)).mean()  # GAPO's probe loss


def anchor_step(grads: list[Tensor], weights: list[Tensor] | None, *, rho: float,
                eps: float = 1e-12) -> list[Tensor]:
    """The adversarial weight step δ, one global norm over all tensors.

    ASAM (weights given): δ = ρ · (w ⊙ w ⊙ g) / (‖w ⊙ g‖₂ + eps).
    SAM (weights None):   δ = ρ · g / (‖g‖₂ + eps).

    Args:
        grads: ∂L_probe/∂θ for each scoped tensor.
        weights: the scoped weights w (same shapes), or None for SAM.
        rho: radius ρ ≥ 0.
        eps: keeps a zero gradient from dividing by zero (δ is then 0).

    Returns:
        δ per tensor, in fp32 or wider (the dtype of `g` promoted with fp32), so that a low-precision
        model still gets an exactly computed step.
    """
    # Multi-tensor (_foreach) kernels: a 135M-weight scope is ~270 tensors, and each full pass over it
    # costs ~0.1 s on a 2-core CPU, so the step is one allocation and three passes.
    wide = [g.to(torch.promote_types(g.dtype, torch.float32)) for g in grads]
    if weights is None:
        step = [g.clone() for g in wide]  # SAM, Foret et al. 2021 (arXiv 2010.01412)
    else:
        # ASAM step (Kwon et al. 2021, arXiv 2102.11600) as used by GAPO (arXiv 2602.04909)
        w = [w.to(g.dtype) for w, g in zip(weights, wide)]
        step = torch._foreach_mul(w, wide)  # w ⊙ g
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(step))) if step else torch.zeros(())
    if weights is not None:
        torch._foreach_mul_(step, w)  # w ⊙ w ⊙ g
    torch._foreach_mul_(step, rho / (norm + eps))
    return step


def gapo_loss(margin: Tensor, anchor_margin: Tensor, *, beta: float,
              gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair GAPO loss on the anchor gap.

    Args:
        margin: [B] m_i(θ), with gradient.
        anchor_margin: [B] m̃_i = m_i(θ + δ); treated as a constant (stop-gradient).
        beta, gamma: β > 0 and γ.

    Returns:
        (per_pair [B] softplus(−(βΓ_i − γ)), gap [B] Γ_i with gradient, weight [B] detached σ(γ − βΓ_i)).
        The weight is the factor the loss puts on ∇m_i: ∂loss_i/∂θ = −β σ(γ − βΓ_i) ∇m_i.
    """
    gap = margin - anchor_margin.detach()  # Anchor Gap Γ_i (arXiv 2602.04909)
    per_pair = F.softplus(-(beta * gap - gamma))
    weight = torch.sigmoid(gamma - beta * gap.detach())
    return per_pair, gap, weight


def flip_auroc(scores: Tensor, flipped: Tensor) -> Tensor:
    """AUROC of `scores` for detecting flipped pairs, by comparing every flipped/clean couple.

    Ties count 1/2. NaN labels are ignored; NaN when either class is empty. O(B²) and free of host
    syncs, meant for one micro-batch (use `flip_auroc_ranked` for long logs).

    Args:
        scores: [B] higher = more likely flipped (GAPO uses −weight).
        flipped: [B] float, 1 flipped / 0 clean / NaN unknown.
    """
    pos, neg = (flipped == 1).to(scores.dtype), (flipped == 0).to(scores.dtype)
    diff = scores[:, None] - scores[None, :]
    wins = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
    pairs = pos.sum() * neg.sum()
    auc = (pos[:, None] * neg[None, :] * wins).sum() / pairs.clamp_min(1)
    return torch.where(pairs > 0, auc, torch.full_like(auc, math.nan))


def flip_auroc_ranked(scores: Tensor, flipped: Tensor) -> Tensor:
    """Same as `flip_auroc` via average ranks (Mann–Whitney U), O(n log n); for logs of many pairs."""
    known = ~torch.isnan(flipped)
    s, y = scores[known].double(), flipped[known] == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    sorted_s, order = torch.sort(s)
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    mean_rank = (ends - counts + 1 + ends).double() / 2  # 1-based ranks, ties share their average
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[inverse]
    return (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
