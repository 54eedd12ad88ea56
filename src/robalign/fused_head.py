"""Completion-token log-probs through a linear LM head, the vocabulary walked in cache-sized chunks.

log p(y_t) = z_{t,y_t} − logsumexp_v z_{t,v} with z = h Wᵀ. The plain path (`F.linear` then
`F.cross_entropy`) writes the N × V logits, reads them for the log-softmax, keeps that for the backward
and fills an N × V gradient: for a 49k vocabulary these are memory-bound passes over hundreds of MiB per
step, and the N × V product itself runs slower than the same work in cache-sized pieces. Here the
vocabulary is walked in chunks whose logits stay in cache, with a running (online) log-sum-exp. For a
frozen head (partial fine-tuning, LoRA, every reference and evaluation pass) the input gradient is
accumulated in the same walk,

    ∂ log p(y_t) / ∂h_t = W_{y_t} − Σ_v softmax(z_t)_v W_v,

rescaled as the running maximum changes, so no N × V matrix outlives its chunk and the backward is one
multiplication by the upstream gradient. A trained head (full fine-tuning) keeps each chunk's logits
instead, as much memory as the plain path keeps, and its backward gives both gradients chunk by chunk.
The values are the same arithmetic in every mode, so a policy equal to its reference has margins of
exactly 0.
"""

from __future__ import annotations

import torch
from torch import nn

#: bytes of one chunk's logits: small enough that they and the chunk's weight rows stay in a 32 MiB L3
#: cache while the log-sum-exp and softmax read them (benchmarks/fused_head.py measures the effect).
CHUNK_BYTES = 8 * 2**20


def chunk_columns(n_tokens: int, itemsize: int = 4) -> int:
    """Vocabulary columns per chunk for `n_tokens` rows: a power of two in [1024, 8192] near CHUNK_BYTES."""
    cols = CHUNK_BYTES // max(1, n_tokens * itemsize)
    return int(min(8192, max(1024, 1 << max(0, cols.bit_length() - 1))))


def can_fuse(head, hidden: torch.Tensor) -> bool:
    """Whether `fused_token_logps` computes exactly what `head` would: a bias-free linear head, no hook
    that expects to see its call (GAPO records the logits; DeepSpeed ZeRO-3 gathers weights in one), and no
    forward-mode (torch.func) transform, whose tangents the fused function does not carry."""
    return (type(head) is nn.Linear and head.bias is None
            and not head._forward_hooks and not head._forward_pre_hooks and hidden.dim() == 2
            and not torch._C._functorch.is_functorch_wrapped_tensor(hidden)
            and torch.autograd.forward_ad.unpack_dual(hidden).tangent is None)


def _in_chunk(targets: torch.Tensor, begin: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose target falls in vocabulary columns [begin, begin + width), those targets' chunk columns)."""
    rows = ((targets >= begin) & (targets < begin + width)).nonzero().squeeze(1)
    return rows, targets[rows] - begin


class _FusedLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        # A running maximum `top` and sum `total` of exp(z − top) over the chunks seen so far (and, for the
        # input gradient, Σ exp(z − top) W), rescaled by exp(top_old − top_new) whenever the maximum grows.
        wide = torch.promote_types(hidden.dtype, torch.float32)  # fp32 for low precision, fp64 stays fp64
        n, vocab = hidden.shape[0], weight.shape[0]
        # A trained head keeps each chunk's logits for its backward, which gives both gradients (the plain
        # path keeps as much: its log-softmax output); a frozen one folds the input gradient in here instead.
        keep_logits = ctx.needs_input_grad[1]
        fold_input_grad = ctx.needs_input_grad[0] and not keep_logits
        top = torch.full((n,), -torch.inf, dtype=wide, device=hidden.device)
        total = torch.zeros(n, dtype=wide, device=hidden.device)
        picked = torch.empty(n, dtype=wide, device=hidden.device)
        acc = torch.zeros(hidden.shape, dtype=wide, device=hidden.device) if fold_input_grad else None
        kept, product_dtype = [], hidden.dtype
        for begin in range(0, vocab, chunk):
            w = weight[begin:begin + chunk]
            z = hidden @ w.T  # under autocast, in its dtype; the backward multiplies in the same one
            product_dtype = z.dtype
            z = z.to(wide)
            rows, cols = _in_chunk(targets, begin, w.shape[0])
            picked[rows] = z[rows, cols]
            new_top = torch.maximum(top, z.amax(dim=1))
            scale = torch.exp(top - new_top)  # 0 at the first chunk (top = −inf)
            e = (z - new_top[:, None]).exp_()  # out of place: z itself is what a trained head keeps
            total.mul_(scale).add_(e.sum(dim=1))
            if fold_input_grad:
                acc.mul_(scale[:, None]).add_((e.to(product_dtype) @ w.to(product_dtype)).to(wide))
            if keep_logits:
                kept.append(z)
            top = new_top
        lse = top + torch.log(total)
        if fold_input_grad:
            ctx.save_for_backward(weight[targets].to(wide) - acc / total[:, None])
        elif keep_logits:
            ctx.save_for_backward(hidden, weight, targets, lse, *kept)
        ctx.chunk, ctx.hidden_dtype, ctx.product_dtype = chunk, hidden.dtype, product_dtype
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[1]:  # frozen head: the input gradient was folded into the forward
            (d_hidden,) = ctx.saved_tensors
            return (grad_out[:, None] * d_hidden).to(ctx.hidden_dtype), None, None, None
        # Trained head: with coef = g (1[v = y_t] − softmax(z_t)_v), ∂/∂W = coefᵀ h and ∂/∂h = coef W, chunk
        # by chunk from the kept logits and the log-sum-exp.
        hidden, weight, targets, lse, *kept = ctx.saved_tensors
        mm = ctx.product_dtype
        h = hidden.to(mm)
        grad_weight = torch.empty_like(weight)
        grad_hidden = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device)
        for begin, z in zip(range(0, weight.shape[0], ctx.chunk), kept):
            w = weight[begin:begin + ctx.chunk].to(mm)
            coef = (z - lse[:, None]).exp_().mul_(-grad_out[:, None])
            rows, cols = _in_chunk(targets, begin, w.shape[0])
            coef[rows, cols] += grad_out[rows]
            coef = coef.to(mm)
            grad_weight[begin:begin + w.shape[0]] = (coef.T @ h).to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_hidden.add_((coef @ w).to(lse.dtype))
        grad_hidden = grad_hidden.to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        return grad_hidden, grad_weight, None, None


def fused_token_logps(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
    """[N] log p(targets) under logits `hidden @ weight.T` (weight [V, H], hidden [N, H]), computed in
    vocabulary chunks; the log-softmax in fp32 (fp64 for fp64 inputs), as the plain path."""
    return _FusedLogps.apply(hidden, weight, targets, chunk or chunk_columns(hidden.shape[0]))
