"""The log-probability engine: one forward over chosen+rejected, the LM head only where it is needed.

The model's body runs once over the 2B rows of a `PreferenceBatch`. Hidden states are then gathered at
the positions that predict completion tokens, and only those go through the LM head and the
log-softmax, so no [tokens x vocabulary] tensor is ever made for prompt or padding tokens (for a
49k-token vocabulary that tensor is most of a naive step's memory).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from robalign.blocks import only_blocks, unwrap_policy
from robalign.data.collate import PreferenceBatch
from robalign.errors import UserError
from robalign.fused_head import can_fuse, fused_token_logps
from robalign.pair_logps import PairLogps


def split_body_and_head(model):
    """Returns (body, head) of a causal LM, looking through a PEFT wrapper.

    `body(input_ids, attention_mask)` gives hidden states; `head` maps them to vocabulary logits.
    """
    model = unwrap_policy(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    return body, base.get_output_embeddings()


def completion_hidden_states(model, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the body once; returns (hidden [N, H], target ids [N], 2B-row index of each token [N]).

    N is the number of completion tokens in the batch; position t-1's state predicts token t.
    With `batch.packed` the body runs over at most B shared-prompt rows instead of 2B rows; with
    `batch.trunk` it runs only the blocks above the cached frozen trunk, from the cached states.
    """
    body, _ = split_body_and_head(model)
    batch = layout_for(body, batch)
    pack = batch.packed
    if batch.trunk is not None:
        # The frozen blocks' output is cached: run only the blocks above them (robalign.trunk).
        with only_blocks(body, batch.trunk.start):
            hidden = body(inputs_embeds=batch.trunk.hidden, attention_mask=packed_mask(body, pack.attention),
                          position_ids=pack.position_ids, use_cache=False).last_hidden_state
    elif pack is not None:
        hidden = body(input_ids=pack.input_ids, attention_mask=packed_mask(body, pack.attention),
                      position_ids=pack.position_ids,
                      use_cache=False).last_hidden_state
    else:
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      use_cache=False).last_hidden_state
    return gather_completion_states(hidden, batch)


def layout_for(body, batch: PreferenceBatch) -> PreferenceBatch:
    """`batch` as `body`'s attention kernel can run it exactly: unchanged, or, for a kernel that takes no
    custom mask (FlashAttention), without its shared-prompt packing, so the 2B padded rows run."""
    from robalign.precision import uses_packed_layout

    if batch.packed is None or uses_packed_layout(body):
        return batch
    if batch.trunk is not None:
        raise UserError(f"model.attn_implementation: {body.config._attn_implementation} cannot run the cached trunk "
                        "states, which are laid out in the shared-prompt packed layout; use sdpa or "
                        "model.trunk_cache: off")
    return dataclasses.replace(batch, packed=None)


def packed_mask(body, allowed: torch.Tensor) -> torch.Tensor:
    """The packed layout's [R, 1, L, L] mask as `body`'s attention kernel reads it.

    SDPA takes the boolean mask (True = may attend). transformers' eager attention *adds* a 4D mask to the
    scores, so a boolean one would add 1 where it should allow and 0 where it should block: silently wrong
    log-probs. For it the mask becomes additive, 0 or the dtype's most negative number.
    """
    if allowed.dtype != torch.bool or getattr(body.config, "_attn_implementation", None) != "eager":
        return allowed
    dtype = body.get_input_embeddings().weight.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                     torch.finfo(dtype).min)


def gather_completion_states(hidden: torch.Tensor, batch: PreferenceBatch):
    """(hidden [N, H], targets [N], 2B-row index [N]) at the completion-predicting positions of the body's
    output `hidden` ([R, T, H] packed rows, or [2B, T, H])."""
    pack = batch.packed
    targets, rows = completion_targets(batch)
    if pack is not None:
        return hidden[pack.source_row, pack.source_pos], targets, rows
    return hidden[:, :-1][batch.completion_mask[:, 1:]], targets, rows


def completion_targets(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(completion token ids [N], 2B-row index of each [N]), in the order the gathered states come."""
    pack = batch.packed
    if pack is not None:
        return pack.targets, pack.seq_row
    scored = batch.completion_mask[:, 1:]
    rows = torch.arange(batch.input_ids.shape[0], device=scored.device)[:, None].expand_as(scored)
    return batch.input_ids[:, 1:][scored], rows[scored]


def token_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each gathered position, [N].

    A bias-free linear head runs in vocabulary chunks (`robalign.fused_head`, which says when it applies);
    any other head makes the logits and lets cross_entropy fuse the log-softmax.
    """
    if can_fuse(head, hidden):
        return fused_token_logps(head.weight, hidden, targets)
    logits = head(hidden)
    # Low-precision logits are upcast for the log-softmax; fp64 (tests) stays fp64.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return -F.cross_entropy(logits, targets, reduction="none")


def completion_token_logps(model, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each completion token [N], its 2B-row index [N]) from one body pass."""
    hidden, targets, rows = completion_hidden_states(model, batch)
    _, head = split_body_and_head(model)
    return token_logps(head, hidden, targets), rows


def sequence_logps(model, batch: PreferenceBatch) -> PairLogps:
    """Completion log-prob sums of chosen and rejected rows in one forward.

    A data-parallel policy (DDP around `PolicyLM`, or a sharded `PolicyLM`) is called through its
    forward, so the wrapper sees the whole pass, LM head included, and syncs or gathers accordingly.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or getattr(model, "is_policy_wrapper", False):
        per_token, rows = model(batch)
    else:
        per_token, rows = completion_token_logps(model, batch)
    return reduce_to_sequences(per_token, rows, batch)


def reduce_to_sequences(per_token: torch.Tensor, rows: torch.Tensor, batch: PreferenceBatch) -> PairLogps:
    n_rows = batch.input_ids.shape[0]
    sums = torch.zeros(n_rows, dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
    lengths = batch.completion_mask.sum(dim=1).to(per_token.dtype)
    b = n_rows // 2
    return PairLogps(sums[:b], sums[b:], lengths[:b], lengths[b:])
