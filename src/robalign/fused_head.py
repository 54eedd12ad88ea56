"""Completion-token log-probs through a linear LM head without the [tokens x vocabulary] matrix.

log p(y_t) = z_{t,y_t} − logsumexp_v z_{t,v} with z = h Wᵀ. The plain path (`F.linear` then
`F.cross_entropy`) writes the N × V logits, reads them for the log-softmax, keeps that for the backward
and fills an N × V gradient: for a 49k vocabulary these are memory-bound passes over hundreds of MiB per
step, and the N × V product itself runs slower than the same work in cache-sized pieces. Here the
vocabulary is walked in chunks whose logits stay in cache, with a running (online) logsumexp, and when a
gradient is wanted the input gradient is accumulated in the same walk:

    ∂ log p(y_t) / ∂h_t = W_{y_t} − Σ_v softmax(z_t)_v W_v,

rescaled as the running maximum changes, so the backward is one multiplication by the upstream gradient.
A trained head's weight gradient recomputes each chunk's softmax in the backward from the saved
log-sum-exp. Policy and reference (and evaluation) go through the same arithmetic, so a policy equal to its
reference has margins of exactly 0.
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


class _FusedLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        # A running maximum `top` and sum `total` of exp(z − top) over the chunks seen so far (and, for the
        # gradient, Σ exp(z − top) W), rescaled by exp(top_old − top_new) whenever the maximum grows.
        wide = torch.promote_types(hidden.dtype, torch.float32)  # fp32 for low precision, fp64 stays fp64
        n, vocab = hidden.shape[0], weight.shape[0]
        want_grad = ctx.needs_input_grad[0]
        top = torch.full((n,), -torch.inf, dtype=wide, device=hidden.device)
        total = torch.zeros(n, dtype=wide, device=hidden.device)
        picked = torch.empty(n, dtype=wide, device=hidden.device)
        acc = torch.zeros(hidden.shape, dtype=wide, device=hidden.device) if want_grad else None
        for begin in range(0, vocab, chunk):
            w = weight[begin:begin + chunk]
            z = (hidden @ w.T).to(wide)
            inside = (targets >= begin) & (targets < begin + w.shape[0])
            picked[inside] = z[inside, targets[inside] - begin]
            new_top = torch.maximum(top, z.amax(dim=1))
            scale = torch.exp(top - new_top)  # 0 at the first chunk (top = −inf)
            z.sub_(new_top[:, None]).exp_()
            total.mul_(scale).add_(z.sum(dim=1))
            if want_grad:
                acc.mul_(scale[:, None]).add_((z.to(w.dtype) @ w).to(wide))
            top = new_top
        lse = top + torch.log(total)
        d_hidden = weight[targets].to(wide) - acc / total[:, None] if want_grad else None
        ctx.save_for_backward(d_hidden, hidden, weight, targets, lse)
        ctx.chunk, ctx.hidden_dtype = chunk, hidden.dtype
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        d_hidden, hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_out[:, None] * d_hidden).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            # A trained head (full fine-tuning): ∂/∂W_v = Σ_t g_t (1[v = y_t] − softmax(z_t)_v) h_t, the softmax
            # recomputed chunk by chunk from the saved log-sum-exp.
            grad_weight = torch.empty_like(weight)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            for begin in range(0, weight.shape[0], ctx.chunk):
                w = weight[begin:begin + ctx.chunk]
                coef = (hidden @ w.T).to(lse.dtype).sub_(lse[:, None]).exp_().mul_(-grad_out[:, None])
                inside = (targets >= begin) & (targets < begin + w.shape[0])
                coef[rows[inside], targets[inside] - begin] += grad_out[inside]
                grad_weight[begin:begin + w.shape[0]] = (coef.to(w.dtype).T @ hidden).to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def fused_token_logps(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
    """[N] log p(targets) under logits `hidden @ weight.T` (weight [V, H], hidden [N, H]), computed in
    vocabulary chunks; the log-softmax in fp32 (fp64 for fp64 inputs), as the plain path."""
    return _FusedLogps.apply(hidden, weight, targets, chunk or chunk_columns(hidden.shape[0]))
