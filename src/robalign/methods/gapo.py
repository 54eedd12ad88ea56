"""GAPO, geometric anchor preference optimisation: SimPO-shaped (or DPO-shaped) updates weighted by how brittle
each pair's margin is under one shared adversarial weight step, the anchor, so that pairs whose margin
collapses near the policy (often the mislabelled ones) move it less (Cho, Kim, Kim 2026, "Learning Where It
Matters: Geometric Anchoring for Robust Preference Alignment", arXiv 2602.04909).

Loss: ℓ_i = −log σ(βΓ_i − γ),  Γ_i = m_i(θ) − stopgrad(m_i(θ + δ))  (the anchor gap)
      m = M (margin: simpo, no reference) or h (margin: dpo)
      δ = ρ·(w⊙w⊙g)/‖w⊙g‖₂ (asam) or ρ·g/‖g‖₂ (sam),  g = ∇_θ mean_i −log σ(βm_i − γ) over the scope
      implicit per-pair weight on ∇m_i: σ(γ − βΓ_i)

One step on a micro-batch of B pairs:

1. probe: one forward gives m_i(θ); g = ∂/∂θ mean_i softplus(−(β m_i − γ)) over the perturbation scope,
   averaged across data-parallel ranks so the global micro-batch shares one anchor;
2. anchor step δ (ASAM or SAM, one global norm; `robalign.losses.gapo.anchor_step`);
3. anchor margins m̃ = m(θ + δ) without gradient, the weights restored bit-exactly afterwards
   (or, with `anchor: first_order`, m̃ ≈ m + ⟨∇m, δ⟩ by forward-mode differentiation);
4. loss mean_i softplus(−(β Γ_i − γ)) with Γ_i = m_i(θ) − stopgrad(m̃_i), reusing the probe forward's
   graph for m_i(θ): 2 forward + 2 backward per step (the authors' path, `reuse_graph: false`, spends a
   third forward on m(θ); both give the same loss and gradients, see tests/methods/test_gapo.py).

Scope under LoRA (a decision, documented here once): the anchor perturbs the *network's* weights in scope
— under PEFT the frozen base weights of the backbone — not the adapter matrices. The paper's anchor is
a neighbour of the policy θ in weight space, whatever parametrises the update; and restricted to the
adapters it degenerates: at initialisation B = 0, so ∂L/∂A = 0 and w_B = 0, the ASAM step is exactly 0
and GAPO would silently become SimPO with uniform weights. The ASAM scale |w| is the effective weight
W + s·BA of each adapted layer (∂L/∂W equals ∂L/∂(W + s·BA), so the step is ASAM on the merged model).
Cost: the probe backward computes weight gradients of the frozen matrices in scope (as full fine-tuning
would), and with `reuse_graph` the trainer's backward computes and discards them once more (their
AccumulateGrad nodes skip tensors that no longer require grad); memory grows by two scope-sized buffers
(δ and the saved originals).

With `scope: last_k_layers` the step is much cheaper: the probe backward stops at block L−k (autograd
differentiates only toward the scoped weights) and the anchor forward re-runs only the last k blocks from
the block input recorded during the probe (`robalign.methods.gapo_tail`); ~1.2× a SimPO step for k = 2 of
30 blocks, against ~2.3× for the whole backbone (docs/benchmarks.md).

Data parallelism costs one extra all-reduce of a scope-sized gradient per micro-batch (the probe's, also
inside `no_sync` accumulation steps: each micro-batch needs its own global anchor).

`anchor: first_order` never writes weights: one forward-mode pass (attention on SDPA's math kernel, the
fused ones have no forward derivative) gives ⟨∇m_i, δ⟩, so Γ_i ≈ −⟨∇m_i, δ⟩; it agrees with the exact
anchor to O(ρ²) and is about as costly.

Dropout must be off: all passes of a step must see the same network. The trainer disables the model's
dropout; LoRA dropout is refused at build time and any live dropout module at the first step.

This module wires the method (parameters, step, metrics); the pieces: `gapo_weights` (which weights the
anchor perturbs), `gapo_anchor` (steps 1–3), `gapo_tail` (the last-k-blocks anchor forward), `gapo_report`
(the end-of-run summary and plot); the formulas are in `robalign.losses.gapo`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robalign.errors import ConfigError, UserError
from robalign.logprobs import sequence_logps
from robalign.losses.common import SftParams, sft_nll
from robalign.losses.gapo import flip_auroc, gapo_loss
from robalign.methods.base import Method, StepResult, reward_metrics
from robalign.methods.gapo_anchor import Anchor, compute_anchor, margin_of
from robalign.methods.gapo_report import write_report
from robalign.pair_logps import PairLogps
from robalign.settings import setting


@dataclass
class GapoParams(SftParams):
    """Everything gapo is told: the loss (β, γ, the SFT term) and how the anchor is built.

    In a config file all of them go under `method:`; a `gapo:` section (older configs) holds more of them.
    """

    method = "gapo"
    beta: float = setting(2.0, "Inverse temperature β of the margin in the GAPO loss.", gt=0)
    gamma: float = setting(0.5, "Target margin γ.")
    radius: float = setting(0.05, "Anchor radius ρ: size of the adversarial weight step; 0 gives Γ = 0 and "
                            "uniform weights σ(γ).", ge=0)
    perturbation: str = setting("asam", "Anchor step: 'asam' (ρ w⊙w⊙g/‖w⊙g‖, scale-invariant) or 'sam' (ρ g/‖g‖).",
                                choices=("asam", "sam"))
    scope: str = setting("backbone", "Weights the anchor perturbs: 'backbone' (embeddings, blocks, final norm; not an "
                         "untied lm_head), 'all', or 'last_k_layers'. Under LoRA: the frozen base weights.",
                         choices=("backbone", "all", "last_k_layers"))
    last_k: int = setting(1, "Number of final transformer blocks perturbed with scope 'last_k_layers'.", ge=1)
    margin: str = setting("simpo", "Margin m: 'simpo' (reference-free length-normalised M) or 'dpo' (log-ratio h "
                          "against the reference model).", choices=("simpo", "dpo"))
    anchor: str = setting("exact", "'exact' (m(θ+δ) by a forward at perturbed weights) or 'first_order' "
                          "(m + ⟨∇m, δ⟩ by forward-mode differentiation; weights never modified).",
                          choices=("exact", "first_order"))
    tail_forward: bool = setting(True, "With scope 'last_k_layers': run only the last k blocks (from the probe's "
                                 "recorded block input) for m(θ+δ), or for ⟨∇m, δ⟩ with the first-order anchor; "
                                 "same numbers, k/L of the cost. False: a full forward.")
    reuse_graph: bool = setting(True, "Reuse the probe forward for the loss (2 forward + 2 backward); false runs the "
                                "authors' third forward (same result, slower).")
    allow_low_precision_anchor: bool = setting(False, "Allow non-fp32 weights or autocast for the anchor (in bf16 "
                                               "almost no weight changes under δ and Γ collapses to 0).")

    @property
    def forward_mode_attention(self) -> bool:
        return self.anchor == "first_order"

    def quantization_problem(self) -> str | None:
        return "the anchor perturbs the frozen base weights, which are quantized"

    @classmethod
    def trunk_cache_settings(cls, train_last_k: int) -> dict:
        # The cached trunk is computed once at the unperturbed weights: the anchor may perturb only the
        # trainable blocks above it (GapoMethod.trunk_cache_problem).
        return {"scope": "last_k_layers", "last_k": train_last_k}

    def whole_weights_problem(self) -> str | None:
        return ("method gapo needs whole weights on every process (the anchor perturbs them and takes one "
                "global norm)")


def build_gapo(params: GapoParams, cfg=None) -> GapoMethod:
    """Builder registered in `robalign.methods.METHODS`; `cfg` is the RunConfig (or None: defaults)."""
    if cfg is not None and cfg.model.lora_dropout > 0:
        raise ConfigError("model.lora_dropout: gapo needs 0 (the probe, anchor and loss passes must see the "
                          "same network)")
    return GapoMethod(params)


def check_dropout_off(model):
    """All passes of a step must see the same network (probe, anchor and loss compare margins)."""
    if not model.training:
        return
    live = [n for n, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
    config = getattr(model, "config", None)
    live += [k for k in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")
             if isinstance(getattr(config, k, None), float) and getattr(config, k) > 0]
    if live:
        raise UserError(f"gapo: dropout is active ({live[:3]}); disable it (robalign.models.disable_dropout, "
                        "model.lora_dropout: 0) so the probe, anchor and loss see the same network")


class GapoMethod(Method):
    """GAPO over the trainer's interface; `anchor()` is also what `robalign score` calls.

    The rewards/* metrics use the margin's reward: β·avg_θ(y) with margin simpo, β(lp_θ − lp_ref) with dpo.
    The metrics below are computed per micro-batch and averaged by the trainer, so flip_auroc is a mean of
    per-micro-batch AUROCs (NaN when a micro-batch holds one class); `finalize` gives the AUROC over all
    logged pairs. Every pair's gap, weight, margin and loss are written to pairs.jsonl.

    Metrics:
        gapo/gap_mean: mean anchor gap Γ = m(θ) − m(θ + δ).
        gapo/weight_mean: mean implicit per-pair weight σ(γ − βΓ).
        gapo/weight_min: smallest per-pair weight.
        gapo/changed_fraction: share of the weight elements δ moves whose stored value actually changed (≈ 1
            in fp32, near 0 in bf16, where the anchor collapses onto the policy).
        gapo/delta_norm: ‖δ‖₂ over the scope (ρ for sam).
        gapo/weight_flipped: mean weight of the pairs flagged `is_flipped` (only when the data has the flags).
        gapo/weight_clean: mean weight of the unflipped pairs (idem).
        gapo/flip_auroc: AUROC of −weight for detecting the flipped pairs (idem).

    Args:
        params: the method's parameters.
    """

    name = "gapo"
    log_pairs = True

    def __init__(self, params: GapoParams | None = None):
        self.params = cfg = params or GapoParams()
        self.beta, self.gamma = cfg.beta, cfg.gamma
        self.needs_reference = cfg.margin == "dpo"
        # The anchor is applied and evaluated in fp32. Under mixed precision the master weights are
        # fp32, but autocast would multiply θ + δ in bf16, where δ rounds away; and m(θ), m̃ must come from one
        # precision, or Γ measures rounding instead of the anchor. So the whole step runs without autocast.
        self.fp32_step = not cfg.allow_low_precision_anchor
        self._checked_model = None

    def activation_checkpointing_problem(self, mode: str) -> str | None:
        c = self.params
        if mode == "none":
            return None
        if c.anchor == "first_order" and c.scope != "last_k_layers":
            return ("the first-order anchor's forward-mode pass cannot run through checkpointed blocks; "
                    "use gapo.scope: last_k_layers, gapo.anchor: exact, or train.activation_checkpointing: none")
        if mode == "selective" and c.reuse_graph:
            return ("the probe's graph is back-propagated twice (gapo.reuse_graph), which selective "
                    "checkpointing forbids; use train.activation_checkpointing: full or gapo.reuse_graph: false")
        return None

    def precision_problem(self, weights: str) -> str | None:
        if weights == "fp32" or self.params.allow_low_precision_anchor:
            return None
        return (f"the anchor needs fp32 weights, but they are {weights}: at most about (ρ·2⁹)² weights change under δ "
                "and the anchor collapses onto the policy. Use model.dtype: fp32 (with "
                "train.mixed_precision: bf16 for speed: GAPO's step then runs in fp32), or set "
                "gapo.allow_low_precision_anchor: true to accept this")

    def trunk_cache_problem(self, train_last_k: int) -> str | None:
        c = self.params
        if c.scope != "last_k_layers" or c.last_k > train_last_k:
            return (f"the anchor must perturb only trainable blocks, or the cached trunk would not see it; set "
                    f"gapo.scope: last_k_layers and gapo.last_k: {train_last_k} (= model.train_last_k)")
        return None

    def anchor(self, model, batch, ref: PairLogps | None = None, *, keep_graph: bool = False) -> Anchor:
        """Probe, anchor step and anchor margins of one batch (steps 1–3 of the module docstring).

        With `keep_graph` the returned margin keeps the probe forward's graph for the loss; otherwise
        everything returned is detached and the graph is freed.
        """
        return compute_anchor(model, batch, ref, self.params, beta=self.beta, gamma=self.gamma,
                              keep_graph=keep_graph)

    def step(self, policy, reference, batch) -> StepResult:
        if self._checked_model is not policy:
            check_dropout_off(policy)
            self._checked_model = policy
        ref = reference.logps(batch) if self.needs_reference else None
        a = self.anchor(policy, batch, ref, keep_graph=self.params.reuse_graph)
        lp, m = a.logps, a.margin
        if not self.params.reuse_graph:  # the authors' third forward, at the restored weights
            lp = sequence_logps(policy, batch)
            m = margin_of(lp, ref, self.params.margin)
        per_pair, gap, weight = gapo_loss(m, a.anchor_margin, beta=self.beta, gamma=self.gamma)
        loss = per_pair.mean()
        if self.params.sft_weight > 0:
            sft = self.params.sft_weight * sft_nll(lp, self.params.sft_reduction)
            per_pair, loss = per_pair + sft, loss + sft.mean()
        metrics = self._metrics(lp, ref, gap.detach(), weight, a, batch)
        per_pair_log = {"gap": gap.detach(), "weight": weight, "margin": m.detach(), "loss": per_pair.detach()}
        return StepResult(loss, metrics, per_pair_log)

    def _metrics(self, lp, ref, gap, weight, a: Anchor, batch) -> dict[str, torch.Tensor]:
        """Step metrics; the flip metrics are per micro-batch (the trainer averages them over a step)."""
        if ref is None:  # reference-free: rewards are β·avg log-probs, as for SimPO
            chosen, rejected = lp.mean()
            rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        else:
            rewards = (self.beta * (lp.chosen - ref.chosen).detach(),
                       self.beta * (lp.rejected - ref.rejected).detach())
        out = reward_metrics(lp, *rewards)
        out.update({"gapo/gap_mean": gap.mean(), "gapo/weight_mean": weight.mean(),
                    "gapo/weight_min": weight.min(), "gapo/changed_fraction": a.changed_fraction,
                    "gapo/delta_norm": a.delta_norm})
        flags = batch.is_flipped
        # The flags are data, not computed values; this reads B floats to decide which keys to log.
        if not bool(torch.isnan(flags).all()):
            flags = flags.to(weight.device, weight.dtype)
            flipped, clean = (flags == 1).to(weight.dtype), (flags == 0).to(weight.dtype)
            out["gapo/weight_flipped"] = (weight * flipped).sum() / flipped.sum()  # NaN if none flipped
            out["gapo/weight_clean"] = (weight * clean).sum() / clean.sum()
            out["gapo/flip_auroc"] = flip_auroc(-weight, flags)
        return out

    def finalize(self, out_dir) -> None:
        """Writes gapo_summary.json and gapo_weights.png from the run's pairs.jsonl (last 50% of steps)."""
        write_report(out_dir)
