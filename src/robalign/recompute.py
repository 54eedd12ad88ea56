"""Activation checkpointing of the policy's transformer blocks, full or selective.

A DPO step's peak memory is set by the activations the forward saves for the backward (≈ 1.5 GiB for
4 pairs of SmolLM2-135M, more than the policy's weights). `selective` keeps, per block, only what is
expensive to recompute — the outputs of matrix products and of the attention kernel — and recomputes
the elementwise work (norms, rotary embedding, SiLU, products, residual adds) during the backward: about
half of the activation memory goes, for no extra matmul. `full` keeps only each block's input and runs
its forward again (≈ one extra forward per step). Both give the same losses and gradients bit for bit,
because the recomputed ops are deterministic (tests/test_recompute.py).

Built on PyTorch's own checkpointing (`torch.utils.checkpoint`, selective policy via
`create_selective_checkpoint_contexts`) through the Hugging Face model's checkpointing switch.
"""

from __future__ import annotations

import functools

import torch

from robalign.config import ACTIVATION_CHECKPOINTING
from robalign.errors import ConfigError


def _saved_ops() -> set:
    """ATen ops whose outputs `selective` keeps: matmuls and fused attention kernels (whichever exist)."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention")
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def _keep_matmuls(saved, ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(functools.partial(_keep_matmuls, _saved_ops()))


def enable_activation_checkpointing(model, mode: str) -> None:
    """Switches the blocks of `model` (a transformers model, possibly inside PEFT) to `mode`."""
    if mode == "none":
        return
    if mode not in ACTIVATION_CHECKPOINTING:
        raise ConfigError(f"train.activation_checkpointing: {mode!r} is not one of "
                          f"{', '.join(ACTIVATION_CHECKPOINTING)}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.activation_checkpointing: {type(base).__name__} does not support activation "
                          "checkpointing; use 'none'")
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = _selective_context
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5 renamed the switch
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
