"""The policy as one module whose forward is the log-prob engine's body pass.

Under data parallelism the policy must be called through the wrapper's forward (DDP prepares its
gradient all-reduce there; FSDP gathers sharded weights there), but the Hugging Face model's own forward
would build full-vocabulary logits for every position. `PolicyLM`'s forward is the log-prob engine's
pass instead, LM head included, returning per-token log-probs of completion tokens only; the trainer
wraps the model in it when more than one process runs.
"""

from __future__ import annotations

import torch

from robalign.logprobs import completion_token_logps


class PolicyLM(torch.nn.Module):
    # Marks the wrapper for `blocks.unwrap_policy` and `logprobs.sequence_logps`, which cannot import this
    # module (it imports the log-prob engine); a sharded PolicyLM (a subclass FSDP makes) keeps the mark.
    is_policy_wrapper = True

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, batch):
        return completion_token_logps(self.lm, batch)
