"""The policy as one module whose forward is the log-prob engine's body pass.

Under data parallelism the policy must be called through the wrapper's forward (DDP prepares its
gradient all-reduce there; FSDP gathers sharded weights there), but the Hugging Face model's own forward
would build full-vocabulary logits for every position. `PolicyLM`'s forward is the log-prob engine's
pass instead, LM head included, returning per-token log-probs of completion tokens only; the trainer
wraps the model in it when more than one process runs.
"""

from __future__ import annotations

import torch


class PolicyLM(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, batch):
        from robalign.logprobs import completion_token_logps

        return completion_token_logps(self.lm, batch)


def unwrap_policy(model):
    """The Hugging Face (or PEFT) model inside DDP / PolicyLM wrappers."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, PolicyLM)):
        model = model.module if hasattr(model, "module") else model.lm
    return model
