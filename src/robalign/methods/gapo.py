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
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from robalign.blocks import decoder_layers
from robalign.errors import ConfigError, UserError
from robalign.logprobs import SequenceLogps, sequence_logps, split_body_and_head
from robalign.losses.common import SftParams
from robalign.losses.gapo import (
    anchor_step,
    flip_auroc,
    flip_auroc_ranked,
    gapo_loss,
    probe_loss,
    sft_nll,
)
from robalign.methods.base import Method, StepResult, reward_metrics
from robalign.methods.gapo_tail import TailRecorder
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

    def whole_weights_problem(self) -> str | None:
        return ("method gapo needs whole weights on every process (the anchor perturbs them and takes one "
                "global norm)")


def build_gapo(params: GapoParams, cfg=None) -> GapoMethod:
    """Builder registered in `robalign.methods.METHODS`; `cfg` is the RunConfig (or None: defaults)."""
    if cfg is not None and cfg.model.lora_dropout > 0:
        raise ConfigError("model.lora_dropout: gapo needs 0 (the probe, anchor and loss passes must see the "
                          "same network)")
    return GapoMethod(params)


# ------------------------------------------------------------------------------- scope and checks


def _adapter_prefix(model) -> str | None:
    """Name prefix of PEFT adapter parameters ('lora_'), or None for a plain model."""
    if not hasattr(model, "peft_config"):
        return None
    return getattr(getattr(model, "base_model", None), "prefix", None)


def scoped_parameters(model, scope: str = "backbone", last_k: int = 1) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the weights the anchor perturbs, named as in `model.named_parameters()`.

    'backbone' = the body of `split_body_and_head` (embeddings, blocks, final norm); an untied lm_head is
    outside, a tied one is the embedding and so inside. 'last_k_layers' = the last `last_k` blocks only.
    'all' = every weight. Adapter parameters of a PEFT model are never in scope (see the module doc).
    """
    body, _ = split_body_and_head(model)
    if scope == "all":
        members = None
    elif scope == "backbone":
        members = {id(p) for p in body.parameters()}
    elif scope == "last_k_layers":
        members = {id(p) for block in decoder_layers(body)[-last_k:] for p in block.parameters()}
    else:
        raise ValueError(f"unknown gapo scope {scope!r}")
    prefix = _adapter_prefix(model)
    named = [(n, p) for n, p in model.named_parameters()
             if (members is None or id(p) in members)
             and not (prefix and any(part.startswith(prefix) for part in n.split(".")))]
    if not named:
        raise UserError(f"gapo.scope: {scope!r} selects no weights of this model")
    return named


def asam_weights(model, named: list[tuple[str, nn.Parameter]]) -> list[torch.Tensor]:
    """The w of ASAM per scoped tensor: the weight itself, or W + s·BA for a LoRA layer's base weight."""
    out = []
    for name, p in named:
        w = p.detach()
        if name.endswith(".base_layer.weight"):
            layer = model.get_submodule(name[: -len(".base_layer.weight")])
            owned = set(getattr(layer, "lora_A", {})) | set(getattr(layer, "lora_embedding_A", {}))
            active = [a for a in getattr(layer, "active_adapters", []) if a in owned]
            if active and not layer.merged and not layer.disable_adapters:
                with torch.no_grad():
                    w = w + sum(layer.get_delta_weight(a).to(w.dtype) for a in active)
        out.append(w)
    return out


def check_precision(named: list[tuple[str, nn.Parameter]], allow: bool):
    """Refuses an anchor in low precision: bf16 can represent almost none of the weight changes δ makes."""
    if allow:
        return
    low = [(n, p.dtype) for n, p in named if p.dtype not in (torch.float32, torch.float64)]
    if low or torch.is_autocast_enabled(named[0][1].device.type):
        what = f"{len(low)} weights are not fp32 (e.g. {low[0][0]}: {low[0][1]})" if low else "autocast is active"
        raise UserError(f"gapo: the anchor needs fp32 weights and no autocast, but {what}; in bf16 at most "
                        "about (ρ·2⁹)² weights change under δ, so the anchor collapses onto the policy. Load "
                        "the model in fp32, or set gapo.allow_low_precision_anchor: true to accept this.")


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


# --------------------------------------------------------------------------------------- anchor


def margin_of(lp: SequenceLogps, ref: SequenceLogps | None, kind: str) -> torch.Tensor:
    """[B] margin m: SimPO's M = avg_θ(y_w) − avg_θ(y_l), or DPO's h against the reference log-probs."""
    if kind == "simpo":
        chosen, rejected = lp.mean()
        return chosen - rejected
    return (lp.chosen - ref.chosen) - (lp.rejected - ref.rejected)


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Averages tensors across data-parallel ranks in one collective; identity with a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


@contextlib.contextmanager
def requiring_grad(params: list[nn.Parameter]):
    """Temporarily lets autograd differentiate frozen weights (LoRA base weights) too."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _changed_fraction(stored, delta: list[torch.Tensor]) -> torch.Tensor:
    """Share of the weight elements δ moves (δ ≠ 0) whose stored value θ + δ differs from θ; 0 if δ = 0.

    `stored` yields (θ + δ as stored, θ) per tensor. Elements with δ = 0 (e.g. embedding rows of tokens
    absent from the batch, whose gradient is 0) are left out, so the number measures what the weights'
    dtype lost: ≈ 1 in fp32 for a small model (about 0.7–0.8 for SmolLM2-135M at ρ = 0.05, where the
    smallest steps fall under half an fp32 ulp), ~1e-7 in bf16.
    """
    changed = sum(torch.count_nonzero(new != old) for new, old in stored)
    moved = sum(torch.count_nonzero(d) for d in delta)
    return torch.as_tensor(changed).float() / torch.as_tensor(moved).clamp_min(1).float()


@contextlib.contextmanager
def perturbed(params: list[nn.Parameter], delta: list[torch.Tensor]):
    """Weights set to θ + δ in place, computed in δ's (≥ fp32) precision; restored bit-exactly on exit.

    Yields the `_changed_fraction` of the perturbation. Writes go through `.data`: an in-place write on
    a parameter, even under no_grad, bumps its version counter, and the retained probe graph (which the
    loss reuses) saved these very tensors, so its backward would refuse to run. Skipping version tracking
    is safe because the originals are copied back exactly before any backward reads them.
    """
    saved = [p.detach().clone() for p in params]
    try:
        for p, d in zip(params, delta):
            p.data.copy_(p.data.to(d.dtype) + d)
        yield _changed_fraction(((p.detach(), s) for p, s in zip(params, saved)), delta)
    finally:
        for p, s in zip(params, saved):
            p.data.copy_(s)


class _MarginOf(nn.Module):
    """m(θ) as a module call, so `torch.func.functional_call` can substitute the scoped weights."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, batch, ref):
        return margin_of(sequence_logps(self.model, batch), ref, self.kind)


def first_order_shift(model, batch, ref, named, delta, kind: str) -> torch.Tensor:
    """[B] ⟨∇m_i, δ⟩ by one forward-mode pass (torch.func.jvp) with δ as the tangent; no weight is written.

    SDPA's fused CPU/GPU kernels have no forward-mode derivative, so attention runs its math kernel here.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = [f"model.{n}" for n, _ in named]
    module = _MarginOf(model, kind)
    primals = tuple(p.detach() for _, p in named)
    tangents = tuple(d.to(p.dtype) for d, p in zip(delta, primals))

    def margin_at(*weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (batch, ref))

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, shift = torch.func.jvp(margin_at, primals, tangents)
    return shift


@dataclass
class Anchor:
    """One micro-batch's anchor.

    Attributes:
        logps: the policy's SequenceLogps at θ (with graph when asked for).
        margin: [B] m(θ) (with graph when asked for).
        anchor_margin: [B] detached m̃ = m(θ + δ) (first-order: m + ⟨∇m, δ⟩).
        changed_fraction: share of the scoped weight elements δ moves whose value θ + δ actually changes in
            the weights' dtype (≈ 1 in fp32, near 0 in bf16).
        delta_norm: ‖δ‖₂ over the scope.
    """

    logps: SequenceLogps
    margin: torch.Tensor
    anchor_margin: torch.Tensor
    changed_fraction: torch.Tensor
    delta_norm: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        return self.margin - self.anchor_margin


# --------------------------------------------------------------------------------------- method


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

    def anchor(self, model, batch, ref: SequenceLogps | None = None, *, keep_graph: bool = False) -> Anchor:
        """Probe, anchor step and anchor margins of one batch (steps 1–3 of the module docstring).

        With `keep_graph` the returned margin keeps the probe forward's graph for the loss; otherwise
        everything returned is detached and the graph is freed.
        """
        c = self.params
        named = scoped_parameters(model, c.scope, c.last_k)
        check_precision(named, c.allow_low_precision_anchor)
        params = [p for _, p in named]
        tail = self._tail_recorder(model)
        with requiring_grad(params), (tail.recording(keep_logits=c.anchor == "first_order") if tail
                                            else contextlib.nullcontext()):
            lp = sequence_logps(model, batch)
            m = margin_of(lp, ref, c.margin)
            grads = torch.autograd.grad(probe_loss(m, beta=self.beta, gamma=self.gamma), params,
                                        retain_graph=keep_graph, allow_unused=True, materialize_grads=True)
        grads = all_reduce_mean(list(grads))  # one anchor for the global micro-batch
        weights = asam_weights(model, named) if c.perturbation == "asam" else None
        delta = anchor_step(grads, weights, rho=c.radius)
        del grads, weights
        delta_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in delta]))
        if c.anchor == "exact":
            with torch.no_grad(), perturbed(params, delta) as changed:
                anchor_lp = tail.sequence_logps(batch) if tail else sequence_logps(model, batch)
                anchor_m = margin_of(anchor_lp, ref, c.margin)
        else:
            shift = (tail.first_order_shift(batch, named, delta, lambda lp: margin_of(lp, ref, c.margin)) if tail
                     else first_order_shift(model, batch, ref, named, delta, c.margin))
            anchor_m = m.detach() + shift
            with torch.no_grad():  # what θ + δ would have changed, formed one tensor at a time
                changed = _changed_fraction((((p.detach().to(d.dtype) + d).to(p.dtype), p.detach())
                                             for p, d in zip(params, delta)), delta)
        if not keep_graph:
            lp, m = lp.detach(), m.detach()
        return Anchor(lp, m, anchor_m.detach(), changed, delta_norm)

    def _tail_recorder(self, model) -> TailRecorder | None:
        """A recorder for the last-k-blocks anchor forward when the scope allows it, else None."""
        c = self.params
        if not (c.tail_forward and c.scope == "last_k_layers"):
            return None
        blocks = decoder_layers(split_body_and_head(model)[0])
        recorder = TailRecorder(model, blocks, max(len(blocks) - c.last_k, 0))
        return recorder if recorder.usable else None

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
            sft = self.params.sft_weight * sft_nll(lp.chosen, lp.chosen_lengths, self.params.sft_reduction)
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
        from robalign.metrics import read_jsonl

        out_dir = Path(out_dir)
        path = out_dir / "pairs.jsonl"
        rows = [r for r in read_jsonl(path) if "weight" in r] if path.is_file() else []
        if not rows:
            return
        summary, weights, flags = summarize_pair_log(rows)
        (out_dir / "gapo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from robalign.plots import weight_histograms

        weight_histograms(weights, flags, out_dir / "gapo_weights.png",
                          title=f"GAPO weights σ(γ − βΓ), steps {summary['from_step']}–{summary['to_step']}")


def _json_number(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize_pair_log(rows: list[dict], tail: float = 0.5) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Summary of the logged pairs of the last `tail` share of steps; returns (summary, weights, flags)."""
    steps = sorted({r["step"] for r in rows})
    first = steps[min(len(steps) - 1, int(len(steps) * (1 - tail)))]
    rows = [r for r in rows if r["step"] >= first]
    weights = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    gaps = torch.tensor([r.get("gap", math.nan) for r in rows], dtype=torch.float64)
    flags = torch.tensor([float(r["is_flipped"]) if "is_flipped" in r else math.nan for r in rows],
                         dtype=torch.float64)
    flipped, clean = weights[flags == 1], weights[flags == 0]
    summary = {
        "from_step": first, "to_step": steps[-1], "pairs": len(rows),
        "flipped_pairs": int(flipped.numel()), "clean_pairs": int(clean.numel()),
        "weight_mean": _json_number(weights.mean()), "gap_mean": _json_number(gaps.mean()),
        "weight_flipped_mean": _json_number(flipped.mean()) if flipped.numel() else None,
        "weight_clean_mean": _json_number(clean.mean()) if clean.numel() else None,
        "flip_auroc": _json_number(flip_auroc_ranked(-weights, flags)),
    }
    return summary, weights, flags
