"""Offline pairwise preference losses: the registry `LOSSES` and `preference_loss`.

Every loss lives in its own module (`robalign.losses.dpo`, `...cdpo`, ...): a small pure function of
sequence log-probs that returns the per-pair loss and the implicit-reward margin it acts on, and its
`Params` dataclass (defaults, help, valid ranges). `LOSSES` maps each name to the module's `Loss`, which
declares what the loss needs (a reference model or not) and how a batch of per-pair losses is reduced,
so the trainer reads capabilities instead of branching on names. `preference_loss` validates the
parameters, adds the optional SFT term and packages the diagnostics.

To add a loss: write a module like `robalign/losses/hinge.py` and add its `LOSS` to the list below.

Shapes: B = number of pairs. All log-probs are token **sums** over the completion, as in DPO (Rafailov et al. 2023).
Numerics: `−log σ(z)` is always written `softplus(−z)`, which stays finite for |z| ≫ 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robalign.losses import cdpo, dpo, drdpo, hinge, hypo, ipo, oracle_robust_offline, rdpo, simpo, sympo
from robalign.losses.common import Loss, LossOutput, SftParams, lengths, sft_nll
from robalign.pair_logps import PairLogps

LOSSES: dict[str, Loss] = {
    m.LOSS.name: m.LOSS for m in (dpo, ipo, hinge, cdpo, rdpo, simpo, hypo, sympo, drdpo, oracle_robust_offline)
}

# Parameters every loss accepts: the SFT / RPO term on the chosen response.
COMMON_DEFAULTS: dict = SftParams.defaults()


def loss_params(name: str, params: dict):
    """The `Params` of loss `name` built from `params` (the loss's defaults for the rest).

    Raises:
        ValueError: unknown loss name, a parameter that loss does not take, or an out-of-range value.
    """
    if name not in LOSSES:
        renamed = " (robalign's former name of oracle_robust_offline; TRL's robust is rdpo)" if name == "robust" else ""
        raise ValueError(f"unknown loss {name!r}{renamed}; valid losses: {sorted(LOSSES)}")
    return LOSSES[name].params.from_dict(params)


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
    return loss_params(name, params).to_dict()


def _pairs(spec: Loss, **tensors: Tensor | None) -> PairLogps:
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
    return PairLogps(tensors["chosen_logps"], tensors["rejected_logps"], *lengths, *refs)


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
        **params: loss parameters (the fields of `LOSSES[name].params`) plus `sft_weight`, `sft_reduction`.

    Returns:
        A `LossOutput`; `loss` is a scalar, every other field has shape [B].

    Raises:
        ValueError: invalid name or parameters, or a required input is missing.
    """
    params = validate_loss_params(name, params)
    spec = LOSSES[name]
    common = COMMON_DEFAULTS.keys()
    p = _pairs(
        spec,
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    own = {k: v for k, v in params.items() if k not in common}
    per_pair, margin = spec.fn(p, **own)
    loss = spec.reduce(per_pair, own)
    if params["sft_weight"] > 0:
        sft = params["sft_weight"] * sft_nll(p, params["sft_reduction"])
        per_pair, loss = per_pair + sft, loss + sft.mean()
    beta = params["beta"]
    with torch.no_grad():
        if spec.needs_reference:
            chosen_rewards = beta * (p.chosen - p.ref_chosen)
            rejected_rewards = beta * (p.rejected - p.ref_rejected)
        else:  # reference-free: the reward is the length-normalised log-prob the margin M uses
            lw, ll = lengths(p, f"by loss {name!r}")
            chosen_rewards, rejected_rewards = beta * p.chosen / lw, beta * p.rejected / ll
    return LossOutput(loss, per_pair, chosen_rewards, rejected_rewards, margin.detach())
