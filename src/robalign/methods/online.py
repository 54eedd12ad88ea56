"""The base of SAIL and oracle-robust online alignment: the trainer hooks, the step clock, sampling and the
generation record (their pieces in `robalign.online`), and the metrics of labelled pairs.

Both methods consume the ordinary `PreferenceBatch` and read its source pairs (`PreferenceBatch.pairs`):
the prompt of pair i is `pairs[i].prompt_ids`, and the dataset pair itself is there for SAIL's DPO / DP
routes. Generated pairs replace dataset pairs row for row, and the policy scores the whole micro-batch in
one concatenated forward (reference log-probs for the same batch come from the reference provider).

Randomness comes only from the global torch RNG, which the trainer checkpoints (`robalign.online.draws`);
batch statistics (the score-function baseline) are summed over processes, so that N processes compute
what one process computes for the same global batch. Every generated pair is appended to
`generations.jsonl` in the run directory (`robalign.online.generations`).

Trainer hooks:
    bind(tokenizer)            before the first `step` (Trainer._setup_data): ids <-> text for the
                               oracle and the record.
    begin(out_dir, step, resumed)
                               at the start of `Trainer.train`, after `_resume` (every process):
                               numbers the records by optimiser step, trims records (and
                               oracle_robust's iterates) past the checkpoint, and on resume restores
                               oracle_robust's projection centre. Without it the first `step` acts as
                               `begin(cfg.train.output_dir, 0, resumed=False)`: right for a fresh run,
                               wrong for a resumed one (the record restarts at step 1).
    after_optimizer_step(model)
                               after each optimiser step, applied or skipped (oracle_robust's
                               projection onto the ball around θ_ref).
"""

from __future__ import annotations

from pathlib import Path

import torch

from robalign.data.collate import PreferenceBatch
from robalign.data.tokenize import TokenizedPair
from robalign.distributed import rank_and_world
from robalign.errors import ConfigError
from robalign.generation import GeneratedPair
from robalign.methods.base import Method, reward_metrics
from robalign.online import generations
from robalign.online.sampling import prompt_texts, sample_pairs
from robalign.online.settings import OnlineConfig
from robalign.oracles import build_oracle
from robalign.pair_logps import PairLogps


def prompt_pairs(batch: PreferenceBatch) -> list[TokenizedPair]:
    """The pairs `batch` was collated from (`PreferenceBatch.pairs`): the prompts to sample for, and the
    dataset responses for SAIL's DPO / DP routes."""
    if batch.pairs is None:
        raise ValueError("an online method reads its prompts from the pairs a batch was collated from "
                         "(PreferenceBatch.pairs, set by robalign.data.collate.collate); this batch has none")
    return batch.pairs


def with_responses(pair: TokenizedPair, generated: GeneratedPair) -> TokenizedPair:
    """`pair`'s prompt with the two sampled responses, y1 in the chosen slot and y2 in the rejected slot."""
    return TokenizedPair(pair.prompt_ids, generated.y1_ids, generated.y2_ids, pair.id, pair.index, None)


def labelled_reward_metrics(lp: PairLogps, y1_preferred: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """The conventional rewards/* and logps/* names for (y_w, y_l) after labelling; `lp` carries the
    reference's log-probs."""
    win = lp.detach().labelled(y1_preferred)
    return reward_metrics(win, beta * (win.chosen - win.ref_chosen), beta * (win.rejected - win.ref_rejected))


def gold_agreement(y1_preferred: torch.Tensor, gold_prob: torch.Tensor) -> torch.Tensor:
    """1 where the observed label picks the gold-preferred response, 0 where not, ½ on gold ties, [N]."""
    gold_y1 = gold_prob > 0.5
    agree = (y1_preferred.cpu() == gold_y1).double()
    return torch.where(gold_prob == 0.5, torch.full_like(agree, 0.5), agree)


def mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """Mean, or 0 for an empty tensor (metrics are averaged over micro-batches; NaN would poison them)."""
    return values.float().mean() if values.numel() else torch.zeros((), device=values.device)


class OnlineMethod(Method):
    """Base of the online methods: sampling from π_θ, oracle labels, the generation record.

    Args:
        params: the method's `Params` (at least `beta`).
        cfg: the run config (None in unit tests: `online:` defaults, nothing written to disk).
    """

    needs_reference = True
    online = True
    default_oracle = "bt:length"

    def __init__(self, params, cfg=None):
        self.params = params
        self.beta = params.beta
        self.gen = OnlineConfig() if cfg is None else cfg.online
        self.oracle_spec = self.gen.oracle or self.default_oracle
        self.oracle = build_oracle(self.oracle_spec)
        if cfg is not None and cfg.model.reference == "cached":
            raise ConfigError(f"method {self.name}: model.reference 'cached' only holds the dataset pairs' "
                              "log-probs, not those of fresh generations; use 'auto' or 'copy'")
        self.cfg = cfg
        self.grad_accum = cfg.train.grad_accum if cfg is not None else 1
        self.out_dir = Path(cfg.train.output_dir) if cfg is not None else None
        self.tokenizer = None
        self.start_step, self.micro, self.begun = 0, 0, False
        self.last_generations: list[dict] = []

    # ----------------------------------------------------------------------------- trainer hooks
    def bind(self, tokenizer) -> None:
        """Gives the method the run's tokenizer (pad / EOS ids, decoding for the oracle)."""
        self.tokenizer = tokenizer

    def begin(self, out_dir, step: int = 0, resumed: bool = False) -> None:
        """Start of training at optimiser step `step`: a fresh record, or the record cut back to `step`."""
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.start_step, self.micro, self.begun = step, 0, True
        generations.restart(self._record_path(), step, resumed)

    def after_optimizer_step(self, model) -> None:
        """Called by the trainer after every optimiser step; nothing to do by default."""

    # ---------------------------------------------------------------------------------- helpers
    def _record_path(self) -> Path | None:
        return generations.generations_path(self.out_dir, rank_and_world()[0])

    def _tick(self) -> tuple[int, bool]:
        """(t, first): t = optimiser updates applied before this micro-step; first micro-step of step t?"""
        if not self.begun:
            self.begin(self.out_dir, 0, resumed=False)
        t = self.start_step + self.micro // self.grad_accum
        first = self.micro % self.grad_accum == 0
        self.micro += 1
        return t, first

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(f"method {self.name}: call bind(tokenizer) before step (the trainer does this)")
        return self.tokenizer

    def _sample(self, policy, prompts: list[list[int]], seeds: list[int]) -> list[GeneratedPair]:
        return sample_pairs(policy, self._require_tokenizer(), prompts, seeds, self.gen)

    def _prompt_texts(self, prompts: list[list[int]]) -> list[str]:
        return prompt_texts(self._require_tokenizer(), prompts)

    def _write(self, t: int, records: list[dict]) -> None:
        """Appends the micro-step's generated pairs to the record (numbered by optimiser step t + 1)."""
        records = [{"step": t + 1, **rec} for rec in records]
        self.last_generations = records
        generations.append(self._record_path(), records)
