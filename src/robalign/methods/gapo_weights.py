"""The weights GAPO's anchor perturbs: which ones (the scope), their ASAM scale, letting autograd reach them
when they are frozen, and the precision they must be stored in.

Scope under LoRA: the anchor perturbs the frozen base weights of the backbone, never the adapters (why:
`robalign.methods.gapo`, "Scope under LoRA").
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from robalign.blocks import decoder_layers
from robalign.errors import UserError
from robalign.logprobs import split_body_and_head


def _adapter_prefix(model) -> str | None:
    """Name prefix of PEFT adapter parameters ('lora_'), or None for a plain model."""
    if not hasattr(model, "peft_config"):
        return None
    return getattr(getattr(model, "base_model", None), "prefix", None)


def scoped_parameters(model, scope: str = "backbone", last_k: int = 1) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the weights the anchor perturbs, named as in `model.named_parameters()`.

    'backbone' = the body of `split_body_and_head` (embeddings, blocks, final norm); an untied lm_head is
    outside, a tied one is the embedding and so inside. 'last_k_layers' = the last `last_k` blocks only.
    'all' = every weight. Adapter parameters of a PEFT model are never in scope.
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
