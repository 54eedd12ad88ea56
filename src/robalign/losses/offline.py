"""Offline pairwise preference losses (SPEC §2).

Every loss is a small pure function of sequence log-probs that returns the per-pair loss and the
implicit-reward margin it acts on. `LOSSES` maps each name to a `LossSpec` that declares what the loss
needs (a reference model or not), its parameter defaults and how a batch of per-pair losses is reduced,
so the trainer reads capabilities instead of branching on names. `preference_loss` validates the
parameters, adds the optional SFT term and packages the diagnostics.

Shapes: B = number of pairs. All log-probs are token **sums** over the completion (SPEC §1).
Numerics: `−log σ(z)` is always written `softplus(−z)`, which stays finite for |z| ≫ 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of a batch of B preference pairs.

    Attributes:
        chosen: [B] summed completion log-probs lp_θ(y_w) of the policy.
        rejected: [B] lp_θ(y_l).
        ref_chosen: [B] lp_ref(y_w), or None for reference-free losses.
        ref_rejected: [B] lp_ref(y_l), or None.
        chosen_lengths: [B] completion token counts len(y_w) (≥ 1), or None.
        rejected_lengths: [B] len(y_l), or None.
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None


@dataclass(frozen=True)
class LossOutput:
    """Result of `preference_loss`.

    Attributes:
        loss: scalar batch loss to backpropagate.
        per_pair: [B] per-pair loss including the SFT term (for drdpo: the per-pair DPO losses; its
            batch loss is −β′ log mean_i exp(−ℓ_i/β′) over the DPO losses, plus the mean SFT term).
        chosen_rewards: [B] detached β(lp_θ(y_w) − lp_ref(y_w)); β·avg_θ(y_w) for reference-free losses.
        rejected_rewards: [B] detached, same for y_l.
        margin: [B] detached implicit-reward margin the loss acts on (h, M, ...).
    """

    loss: Tensor
    per_pair: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margin: Tensor


# --- margins (SPEC §1) --------------------------------------------------------------------------


def _dpo_margin(p: PairLogps) -> Tensor:
    """h = [lp_θ(y_w) − lp_ref(y_w)] − [lp_θ(y_l) − lp_ref(y_l)], shape [B]."""
    return (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)


def _lengths(p: PairLogps, why: str) -> tuple[Tensor, Tensor]:
    """(len(y_w), len(y_l)), each [B]; raises ValueError naming `why` when they were not given."""
    if p.chosen_lengths is None or p.rejected_lengths is None:
        raise ValueError(f"chosen_lengths and rejected_lengths are required {why}")
    return p.chosen_lengths, p.rejected_lengths


def _avg_dpo_margin(p: PairLogps) -> Tensor:
    """h with each log-ratio divided by its completion length, shape [B]."""
    lw, ll = _lengths(p, "by ipo with normalize_length=True")
    return (p.chosen - p.ref_chosen) / lw - (p.rejected - p.ref_rejected) / ll


def _simpo_margin(p: PairLogps) -> Tensor:
    """M = avg_θ(y_w) − avg_θ(y_l), shape [B]; no reference model."""
    lw, ll = _lengths(p, "by simpo (length-normalised margin)")
    return p.chosen / lw - p.rejected / ll


# --- per-pair losses: each returns (per_pair [B], margin [B]) -------------------------------------


def dpo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """DPO: softplus(−βh)."""
    h = _dpo_margin(p)
    return F.softplus(-beta * h), h  # DPO, Eq. (7), Rafailov et al. 2023 (arXiv 2305.18290)


def ipo(p: PairLogps, *, beta: float, normalize_length: bool) -> tuple[Tensor, Tensor]:
    """IPO: (h − 1/(2β))², optionally on length-averaged log-ratios."""
    h = _avg_dpo_margin(p) if normalize_length else _dpo_margin(p)
    return (h - 1.0 / (2.0 * beta)) ** 2, h  # IPO, Eq. (17), Azar et al. 2023 (arXiv 2310.12036)


def hinge(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """SLiC hinge: max(0, 1 − βh)."""
    h = _dpo_margin(p)
    return F.relu(1.0 - beta * h), h  # SLiC-HF hinge, Zhao et al. 2023 (arXiv 2305.10425)


def cdpo(p: PairLogps, *, beta: float, epsilon: float) -> tuple[Tensor, Tensor]:
    """Conservative DPO (label smoothing): (1−ε)softplus(−βh) + ε softplus(βh)."""
    h = _dpo_margin(p)
    # cDPO / label smoothing, Mitchell 2023 ("A note on DPO with noisy preferences")
    return (1.0 - epsilon) * F.softplus(-beta * h) + epsilon * F.softplus(beta * h), h


def rdpo(p: PairLogps, *, beta: float, epsilon: float) -> tuple[Tensor, Tensor]:
    """Provably robust DPO: [(1−ε)softplus(−βh) − ε softplus(βh)] / (1−2ε).

    The minus sign and the second term make the loss unbiased under label flips at rate ε:
    (1−ε)·rdpo(h) + ε·rdpo(−h) = dpo(h).
    """
    h = _dpo_margin(p)
    # rDPO, Eq. (8), arXiv 2403.00409 (Chowdhury, Kini, Natarajan 2024)
    loss = ((1.0 - epsilon) * F.softplus(-beta * h) - epsilon * F.softplus(beta * h)) / (1.0 - 2.0 * epsilon)
    return loss, h


def simpo(p: PairLogps, *, beta: float, gamma: float) -> tuple[Tensor, Tensor]:
    """SimPO: softplus(−(βM − γ)), reference-free and length-normalised."""
    m = _simpo_margin(p)
    return F.softplus(-(beta * m - gamma)), m  # SimPO, Eq. (6), Meng et al. 2024 (arXiv 2405.14734)


def hypo(p: PairLogps, *, beta: float) -> tuple[Tensor, Tensor]:
    """HyPO: softplus(−β(Δ_θ − max(0, Δ_ref))); the reference only counts when it agrees with the label."""
    m = (p.chosen - p.rejected) - F.relu(p.ref_chosen - p.ref_rejected)  # HyPO = SPEC §2 hypo row
    return F.softplus(-beta * m), m


def sympo(p: PairLogps, *, beta: float, kind: str) -> tuple[Tensor, Tensor]:
    """Symmetric loss ℓ(z) + ℓ(−z) = 1 on z = βh: ramp clip(0.5 − 0.5z, 0, 1) or sigmoid σ(−z)."""
    h = _dpo_margin(p)
    z = beta * h
    # SymPO symmetric losses (ramp / sigmoid), SPEC §2 sympo row
    loss = torch.clamp(0.5 - 0.5 * z, 0.0, 1.0) if kind == "ramp" else torch.sigmoid(-z)
    return loss, h


def oracle_robust_offline(p: PairLogps, *, beta: float, rho: float) -> tuple[Tensor, Tensor]:
    """Oracle-robust penalty, offline form: softplus(−βh) + ρβ|h| (formerly `robust`, the name TRL uses for rDPO)."""
    h = _dpo_margin(p)
    return F.softplus(-beta * h) + rho * beta * h.abs(), h  # SPEC §5 offline form, arXiv 2602.20457


def drdpo(p: PairLogps, *, beta: float, beta_prime: float) -> tuple[Tensor, Tensor]:
    """Dr.DPO per-pair term: the plain DPO loss (the robustness is in `_drdpo_reduce`)."""
    return dpo(p, beta=beta)


# --- batch reductions -----------------------------------------------------------------------------


def _mean_reduce(per_pair: Tensor, params: dict) -> Tensor:
    return per_pair.mean()


def _drdpo_reduce(per_pair: Tensor, params: dict) -> Tensor:
    """−β′ log mean_i exp(−ℓ_i/β′), via logsumexp so large ℓ/β′ cannot overflow.

    Unlike the mean, this is not additive over pairs: split across ranks or micro-batches it equals the
    one-batch loss only if the per-pair losses are gathered first.
    """
    bp = params["beta_prime"]
    # Dr.DPO objective, Wu et al. 2024 (arXiv 2407.07880)
    return -bp * (torch.logsumexp(-per_pair / bp, dim=0) - math.log(per_pair.numel()))


# --- registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """What a loss needs and how it is computed.

    Attributes:
        name: registry key.
        fn: pure per-pair function `fn(PairLogps, **params) -> (per_pair [B], margin [B])`.
        needs_reference: whether reference log-probs are required (False only for simpo).
        defaults: the loss's own parameters and their defaults (SPEC §2 table).
        reduce: `reduce(per_pair [B], params) -> scalar` batch reduction of the base loss.
    """

    name: str
    fn: Callable[..., tuple[Tensor, Tensor]]
    needs_reference: bool
    defaults: dict
    reduce: Callable[[Tensor, dict], Tensor] = field(default=_mean_reduce)


LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in [
        LossSpec("dpo", dpo, True, {"beta": 0.1}),
        LossSpec("ipo", ipo, True, {"beta": 0.1, "normalize_length": False}),
        LossSpec("hinge", hinge, True, {"beta": 0.1}),
        LossSpec("cdpo", cdpo, True, {"beta": 0.1, "epsilon": 0.1}),
        LossSpec("rdpo", rdpo, True, {"beta": 0.1, "epsilon": 0.1}),
        LossSpec("simpo", simpo, False, {"beta": 2.0, "gamma": 0.5}),
        LossSpec("hypo", hypo, True, {"beta": 0.1}),
        LossSpec("sympo", sympo, True, {"beta": 0.1, "kind": "ramp"}),
        LossSpec("drdpo", drdpo, True, {"beta": 0.1, "beta_prime": 1.0}, reduce=_drdpo_reduce),
        LossSpec("oracle_robust_offline", oracle_robust_offline, True, {"beta": 0.1, "rho": 0.1}),
    ]
}

# Parameters every loss accepts: the SFT / RPO term on the chosen response.
COMMON_DEFAULTS: dict = {"sft_weight": 0.0, "sft_reduction": "mean"}


def _real(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"loss parameter {name!r} must be a finite number, got {v!r}")
    return float(v)


def _positive(name: str, v: object) -> float:
    if _real(name, v) <= 0:
        raise ValueError(f"loss parameter {name!r} must be > 0, got {v!r}")
    return float(v)


def _noise_rate(name: str, v: object) -> float:
    # ε = 0.5 divides rDPO by zero and ε > 0.5 inverts the labels: an error, not a warning (SPEC §2).
    if not 0.0 <= _real(name, v) < 0.5:
        raise ValueError(f"loss parameter {name!r} must lie in [0, 0.5), got {v!r}")
    return float(v)


def _non_negative(name: str, v: object) -> float:
    if _real(name, v) < 0:
        raise ValueError(f"loss parameter {name!r} must be >= 0, got {v!r}")
    return float(v)


def _boolean(name: str, v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"loss parameter {name!r} must be true or false, got {v!r}")
    return v


def _choice(*options: str) -> Callable[[str, object], str]:
    def check(name: str, v: object) -> str:
        if v not in options:
            raise ValueError(f"loss parameter {name!r} must be one of {list(options)}, got {v!r}")
        return v

    return check


_CHECKS: dict[str, Callable[[str, object], object]] = {
    "beta": _positive,
    "beta_prime": _positive,
    "epsilon": _noise_rate,
    "rho": _noise_rate,
    "gamma": _real,
    "normalize_length": _boolean,
    "kind": _choice("ramp", "sigmoid"),
    "sft_weight": _non_negative,
    "sft_reduction": _choice("mean", "sum"),
}


def validate_loss_params(name: str, params: dict) -> dict:
    """Merge `params` over the defaults of loss `name` and check every value.

    Args:
        name: a key of `LOSSES`.
        params: user parameters (may be empty).

    Returns:
        The loss's defaults, then `COMMON_DEFAULTS`, overridden by `params`, with values checked.

    Raises:
        ValueError: unknown loss name, a parameter that loss does not take, or an out-of-range value.
    """
    if name not in LOSSES:
        renamed = " (robalign's former name of oracle_robust_offline; TRL's robust is rdpo)" if name == "robust" else ""
        raise ValueError(f"unknown loss {name!r}{renamed}; valid losses: {sorted(LOSSES)}")
    merged = {**LOSSES[name].defaults, **COMMON_DEFAULTS}
    unknown = sorted(set(params) - set(merged))
    if unknown:
        raise ValueError(f"loss {name!r} does not take parameter(s) {unknown}; it takes {sorted(merged)}")
    merged.update(params)
    return {k: _CHECKS[k](k, v) for k, v in merged.items()}


def _sft_nll(p: PairLogps, reduction: str) -> Tensor:
    """NLL of the chosen response, [B]: token mean (default) or sequence sum (RPO)."""
    nll = -p.chosen  # SFT / RPO term, Liu et al. 2024 (arXiv 2405.16436)
    if reduction == "mean":
        if p.chosen_lengths is None:
            raise ValueError("chosen_lengths is required for the SFT term with sft_reduction='mean'")
        nll = nll / p.chosen_lengths
    return nll


def _pairs(spec: LossSpec, **tensors: Tensor | None) -> PairLogps:
    """Check inputs against the loss's needs and build a `PairLogps` (lengths cast to the logps dtype)."""
    ref = ("ref_chosen_logps", "ref_rejected_logps")
    if spec.needs_reference and any(tensors[k] is None for k in ref):
        raise ValueError(f"loss {spec.name!r} needs a reference model: pass {' and '.join(ref)}")
    shape = tensors["chosen_logps"].shape
    for k, t in tensors.items():
        if t is not None and (t.dim() != 1 or t.shape != shape):
            raise ValueError(f"{k} must have shape [B] = {list(shape)}, got {list(t.shape)}")
    dtype = tensors["chosen_logps"].dtype
    lengths = [tensors[k] for k in ("chosen_lengths", "rejected_lengths")]
    lengths = [None if t is None else t.to(dtype) for t in lengths]
    refs = [tensors[k] if spec.needs_reference else None for k in ref]
    return PairLogps(tensors["chosen_logps"], tensors["rejected_logps"], *refs, *lengths)


def preference_loss(
    name: str,
    *,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    **params,
) -> LossOutput:
    """Compute an offline preference loss from sequence log-probs.

    Args:
        name: one of `LOSSES` (dpo ipo hinge cdpo rdpo simpo hypo sympo drdpo
            oracle_robust_offline).
        chosen_logps: [B] summed completion log-probs of the policy on y_w.
        rejected_logps: [B] same on y_l.
        ref_chosen_logps: [B] reference log-probs on y_w; required unless the loss is reference-free.
        ref_rejected_logps: [B] reference log-probs on y_l.
        chosen_lengths: [B] completion token counts of y_w (int or float); required by simpo,
            ipo with normalize_length, and the token-mean SFT term.
        rejected_lengths: [B] completion token counts of y_l.
        **params: loss parameters (see `LOSSES[name].defaults`) plus `sft_weight`, `sft_reduction`.

    Returns:
        A `LossOutput`; `loss` is a scalar, every other field has shape [B].

    Raises:
        ValueError: invalid name or parameters, or a required input is missing.
    """
    params = validate_loss_params(name, params)
    spec = LOSSES[name]
    p = _pairs(
        spec,
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    loss_params = {k: params[k] for k in spec.defaults}
    per_pair, margin = spec.fn(p, **loss_params)
    loss = spec.reduce(per_pair, loss_params)
    if params["sft_weight"] > 0:
        sft = params["sft_weight"] * _sft_nll(p, params["sft_reduction"])
        per_pair, loss = per_pair + sft, loss + sft.mean()
    beta = params["beta"]
    with torch.no_grad():
        if spec.needs_reference:
            chosen_rewards = beta * (p.chosen - p.ref_chosen)
            rejected_rewards = beta * (p.rejected - p.ref_rejected)
        else:  # reference-free: the reward is the length-normalised log-prob the margin M uses
            lw, ll = _lengths(p, f"by loss {name!r}")
            chosen_rewards, rejected_rewards = beta * p.chosen / lw, beta * p.rejected / ll
    return LossOutput(loss, per_pair, chosen_rewards, rejected_rewards, margin.detach())
