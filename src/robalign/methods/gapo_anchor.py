"""GAPO's anchor of one micro-batch (steps 1–3 of `robalign.methods.gapo`): the probe gradient, the
anchor step δ, and the margins m̃ = m(θ + δ), exactly (weights written and restored) or to first order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from robalign.blocks import decoder_layers
from robalign.distributed import mean_over_processes
from robalign.logprobs import sequence_logps, split_body_and_head
from robalign.losses.gapo import anchor_step, probe_loss
from robalign.methods.gapo_tail import TailRecorder
from robalign.methods.gapo_weights import asam_weights, check_precision, requiring_grad, scoped_parameters
from robalign.pair_logps import PairLogps, dpo_margin, length_normalised_margin


def margin_of(lp: PairLogps, ref: PairLogps | None, kind: str) -> torch.Tensor:
    """[B] GAPO's margin m of the policy's log-probs `lp`: SimPO's M (`margin: simpo`) or DPO's h against
    the reference's log-probs `ref` (`margin: dpo`)."""
    return length_normalised_margin(lp) if kind == "simpo" else dpo_margin(lp.with_reference(ref))


def changed_fraction(stored, delta: list[torch.Tensor]) -> torch.Tensor:
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

    Yields the `changed_fraction` of the perturbation. Writes go through `.data`: an in-place write on
    a parameter, even under no_grad, bumps its version counter, and the retained probe graph (which the
    loss reuses) saved these very tensors, so its backward would refuse to run. Skipping version tracking
    is safe because the originals are copied back exactly before any backward reads them.
    """
    saved = [p.detach().clone() for p in params]
    try:
        for p, d in zip(params, delta):
            p.data.copy_(p.data.to(d.dtype) + d)
        yield changed_fraction(((p.detach(), s) for p, s in zip(params, saved)), delta)
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
        logps: the policy's PairLogps at θ (with graph when asked for).
        margin: [B] m(θ) (with graph when asked for).
        anchor_margin: [B] detached m̃ = m(θ + δ) (first-order: m + ⟨∇m, δ⟩).
        changed_fraction: share of the scoped weight elements δ moves whose value θ + δ actually changes in
            the weights' dtype (≈ 1 in fp32, near 0 in bf16).
        delta_norm: ‖δ‖₂ over the scope.
    """

    logps: PairLogps
    margin: torch.Tensor
    anchor_margin: torch.Tensor
    changed_fraction: torch.Tensor
    delta_norm: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        return self.margin - self.anchor_margin


def tail_recorder(model, params) -> TailRecorder | None:
    """A recorder for the last-k-blocks anchor forward when the scope allows it, else None."""
    if not (params.tail_forward and params.scope == "last_k_layers"):
        return None
    blocks = decoder_layers(split_body_and_head(model)[0])
    recorder = TailRecorder(model, blocks, max(len(blocks) - params.last_k, 0))
    return recorder if recorder.usable else None


def compute_anchor(model, batch, ref: PairLogps | None, params, *, beta: float, gamma: float,
                   keep_graph: bool = False) -> Anchor:
    """Probe, anchor step and anchor margins of one batch under `params` (a `GapoParams`).

    With `keep_graph` the returned margin keeps the probe forward's graph for the loss; otherwise
    everything returned is detached and the graph is freed.
    """
    c = params
    named = scoped_parameters(model, c.scope, c.last_k)
    check_precision(named, c.allow_low_precision_anchor)
    weights_in_scope = [p for _, p in named]
    tail = tail_recorder(model, c)
    with requiring_grad(weights_in_scope), (tail.recording() if tail else contextlib.nullcontext()):
        lp = sequence_logps(model, batch)
        m = margin_of(lp, ref, c.margin)
        grads = torch.autograd.grad(probe_loss(m, beta=beta, gamma=gamma), weights_in_scope,
                                    retain_graph=keep_graph, allow_unused=True, materialize_grads=True)
    grads = mean_over_processes(list(grads))  # one anchor for the global micro-batch
    scale = asam_weights(model, named) if c.perturbation == "asam" else None
    delta = anchor_step(grads, scale, rho=c.radius)
    del grads, scale
    delta_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in delta]))
    if c.anchor == "exact":
        with torch.no_grad(), perturbed(weights_in_scope, delta) as changed:
            anchor_lp = tail.sequence_logps(batch) if tail else sequence_logps(model, batch)
            anchor_m = margin_of(anchor_lp, ref, c.margin)
    else:
        shift = (tail.first_order_shift(batch, named, delta, lambda lp: margin_of(lp, ref, c.margin)) if tail
                 else first_order_shift(model, batch, ref, named, delta, c.margin))
        anchor_m = m.detach() + shift
        with torch.no_grad():  # what θ + δ would have changed, formed one tensor at a time
            changed = changed_fraction((((p.detach().to(d.dtype) + d).to(p.dtype), p.detach())
                                        for p, d in zip(weights_in_scope, delta)), delta)
    if not keep_graph:
        lp, m = lp.detach(), m.detach()
    return Anchor(lp, m, anchor_m.detach(), changed, delta_norm)
