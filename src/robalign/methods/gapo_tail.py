"""The anchor forward of a `last_k_layers` scope, from block L−k onwards only.

δ touches only the last k blocks, so everything below them computes the same at θ and θ + δ. The probe
forward records the input of block L−k (a forward pre-hook, arguments and keyword arguments as the body
passed them: hidden states, attention mask, position embeddings, …); the anchor then runs only blocks
L−k…L−1, the body's final norm and the LM head on completion positions. Its margins equal those of a
full forward at θ + δ (tests/methods/test_gapo_tail.py), at k/L of the cost of the blocks. The first-order
anchor uses the same tail: one forward-mode pass through the last k blocks and the final norm gives the
tangent dh of the completion states, and the LM head's part is written out: for the log-softmax,
d log p(y) = dz_y − Σ_v p_v dz_v with dz = W dh, where p comes from the logits of the replayed states at θ
(the probe's own, to rounding), so the head costs two matmuls and no forward-mode pass through it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from robalign.blocks import final_norm
from robalign.logprobs import (
    completion_targets,
    gather_completion_states,
    layout_for,
    reduce_to_sequences,
    split_body_and_head,
    token_logps,
)
from robalign.pair_logps import PairLogps


class TailRecorder:
    """Records the call of block `start` during a forward (inside `recording()`), to replay the tail."""

    def __init__(self, model, blocks: nn.ModuleList, start: int):
        self.body, self.head = split_body_and_head(model)
        self.norm = final_norm(self.body)
        self.blocks, self.start = blocks, start
        self.call: tuple[tuple, dict] | None = None

    @property
    def usable(self) -> bool:
        return self.norm is not None

    @contextlib.contextmanager
    def recording(self):
        """Records the tail's input. (Nothing on the LM head: a hook there would keep the probe off the fused
        head path, `robalign.fused_head`, so that its margins would differ from the reference's by rounding.)"""

        def keep(_module, args, kwargs):
            self.call = (tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs))

        handle = self.blocks[self.start].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @torch.no_grad()
    def sequence_logps(self, batch) -> PairLogps:
        """Completion log-probs from the recorded block input through the (current) last blocks."""
        return self._run(batch, lambda _k, block, *args, **kwargs: block(*args, **kwargs))

    def first_order_shift(self, batch, named, delta, margin_fn) -> torch.Tensor:
        """[B] ⟨∇m_i, δ⟩ through the last blocks only (forward-mode, δ as the tangent; nothing written).

        `margin_fn` must be affine in the log-probs (the SimPO and DPO margins are), so its tangent is
        margin_fn(d logps) − margin_fn(0).
        """
        from torch.nn.attention import SDPBackend, sdpa_kernel
        local = {id(p): (k, n) for k, block in enumerate(self.blocks[self.start:])
                 for n, p in block.named_parameters()}
        where = [local[id(p)] for _, p in named]  # a last_k_layers scope lies inside the tail
        primals = tuple(p.detach() for _, p in named)
        tangents = tuple(d.to(p.dtype) for d, p in zip(delta, primals))

        def states_at(*weights):
            per_block: list[dict] = [{} for _ in self.blocks[self.start:]]
            for (k, name), w in zip(where, weights):
                per_block[k][name] = w
            hidden = self._states(lambda k, block, *args, **kwargs: torch.func.functional_call(
                block, per_block[k], args, kwargs))
            return gather_completion_states(self.norm(hidden), batch)[0]

        # SDPA's fused kernels have no forward derivative; the math kernel does.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            states, d_states = torch.func.jvp(states_at, primals, tangents)
            targets, rows = completion_targets(batch)
            logits = self.head(states)  # the probe's logits at θ, from the replayed completion states
            wide = torch.promote_types(logits.dtype, torch.float32)
            if type(self.head) is nn.Linear:
                d_logits = F.linear(d_states, self.head.weight)  # the bias has no tangent
            else:  # e.g. a LoRA-wrapped head: let forward mode see its whole computation
                d_logits = torch.func.jvp(self.head, (states,), (d_states,))[1]
            d_logits = d_logits.to(wide)
            probs = torch.softmax(logits.to(wide), dim=-1)
            d_token = d_logits.gather(1, targets[:, None])[:, 0] - torch.linalg.vecdot(probs, d_logits)
            tangent = reduce_to_sequences(d_token, rows, batch)
            return margin_fn(tangent) - margin_fn(reduce_to_sequences(torch.zeros_like(d_token), rows, batch))

    def _states(self, call_block) -> torch.Tensor:
        """The last block's output hidden states, from the recorded input."""
        if self.call is None:
            raise RuntimeError("TailRecorder: no recorded forward (run the probe inside recording())")
        args, kwargs = self.call[0], dict(self.call[1])
        hidden, rest = args[0] if args else kwargs.pop("hidden_states"), args[1:]
        for k, block in enumerate(self.blocks[self.start:]):
            out = call_block(k, block, hidden, *rest, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _run(self, batch, call_block) -> PairLogps:
        batch = layout_for(self.body, batch)  # the layout the probe forward ran
        hidden, targets, rows = gather_completion_states(self.norm(self._states(call_block)), batch)
        return reduce_to_sequences(token_logps(self.head, hidden, targets), rows, batch)
