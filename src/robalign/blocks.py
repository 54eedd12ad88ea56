"""Where a causal LM keeps its transformer blocks, final norm and weights, and running a contiguous range of blocks.

Shared by partial fine-tuning (`model.train_last_k`), the frozen-trunk cache and GAPO's `last_k_layers`
scope. Found by structure (the body's block list and norm), not by model name.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from robalign.errors import UserError

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def unwrap_policy(model):
    """The Hugging Face (or PEFT) model inside DDP and `policy.PolicyLM` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif getattr(model, "is_policy_wrapper", False):
            model = model.lm
        else:
            return model


def block_list_name(body: nn.Module) -> str:
    """Attribute name of the body's transformer blocks (`layers`, `h`, `blocks`, or its only ModuleList)."""
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(body, name, None), nn.ModuleList):
            return name
    lists = [n for n, m in body.named_children() if isinstance(m, nn.ModuleList)]
    if len(lists) != 1:
        raise UserError("model: cannot find this model's list of transformer blocks")
    return lists[0]


def decoder_layers(body: nn.Module) -> nn.ModuleList:
    """The body's transformer blocks, in order."""
    return getattr(body, block_list_name(body))


def final_norm_name(body: nn.Module) -> str | None:
    """Attribute name of the body's norm after the last block (Llama `norm`, GPT-2 `ln_f`, …), or None."""
    for name in _FINAL_NORMS:
        if isinstance(getattr(body, name, None), nn.Module):
            return name
    return None


def final_norm(body: nn.Module) -> nn.Module | None:
    name = final_norm_name(body)
    return None if name is None else getattr(body, name)


@contextlib.contextmanager
def only_blocks(body: nn.Module, start: int, stop: int | None = None, *, norm: bool = True):
    """Inside the context the body runs blocks `start:stop` only (and its final norm unless `norm=False`).

    Called with `inputs_embeds` = the hidden states entering block `start`, the body then computes exactly
    what its full forward computes from there on (its mask and rotary embeddings come from the
    `attention_mask` and `position_ids` it is given). Models that transform `inputs_embeds` before the
    first block (e.g. Gemma scales them) do not; `robalign.trunk` checks every model once at start-up.
    """
    name = block_list_name(body)
    blocks = getattr(body, name)
    norm_name = final_norm_name(body)
    if not norm and norm_name is None:
        raise UserError("model: cannot find this model's final norm, so its trunk cannot be split off")
    kept_norm = getattr(body, norm_name) if norm_name else None
    try:
        # Plain attribute writes: the parameters are the same objects, so optimisers and DDP see no change.
        body._modules[name] = nn.ModuleList(list(blocks)[start:stop])
        if not norm:
            body._modules[norm_name] = nn.Identity()
        yield body
    finally:
        body._modules[name] = blocks
        if norm_name:
            body._modules[norm_name] = kept_norm


def device_of(model) -> torch.device:
    """Where `model`'s weights live (the CPU for None or a model without parameters)."""
    param = next(model.parameters(), None) if model is not None else None
    return param.device if param is not None else torch.device("cpu")
