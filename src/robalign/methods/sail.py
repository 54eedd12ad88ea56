"""SAIL, self-improving online alignment: the DPO loss in expectation over pairs the current policy samples, labelled
by the policy's own Bradley–Terry draw or by a preference oracle, mixed with dataset pairs (Ding et al. 2024,
arXiv 2406.15567).

Loss: ℓ = −log σ(βh_w) on the pair as labelled; by route of each example:
      DPO  ℓ
      DP   ℓ − ½·coef_dp·(log σ(βh_w))²
      PP   ℓ − ½·coef_pp·(log σ(βh_w))² + coef_pp·(stopgrad(ℓ) − b)·(lp_θ(y1) + lp_θ(y2))
      PR   ℓ + coef_pr·(stopgrad(ℓ) − b)·(lp_θ(y1) + lp_θ(y2))
      b = mean of stopgrad(ℓ) over the PP and PR examples of the micro-batch

Each example of the micro-batch is routed at random (global torch RNG):
    DPO (1 − r − p − g)  the dataset pair, its label;
    DP  (r)              the dataset pair, relabelled by the policy's own Bradley–Terry draw
                         (swap with probability 1 − σ(βh)), + −½·coef_dp·(log σ(βh_w))²;
    PP  (p)              two samples from π_θ for this example's prompt, labelled by the policy's draw,
                         + −½·coef_pp·(log σ(βh_w))² + the response score-function term;
    PR  (g)              two samples from π_θ, labelled by the preference oracle (`online.oracle`),
                         + the response score-function term.
The score-function term coef·(ℓ_i.detach() − b)·(lp_θ(y1) + lp_θ(y2)) uses ℓ_i = softplus(−βh_w) and b
the mean of ℓ over the sampled (PP and PR) examples of the micro-batch; every term is a per-pair term
averaged over the B pairs like the main loss. Unlike the official code, samples are never paired with
shuffled prompts and nothing is added to gradients by hooks.

The defaults r = 0.4, p = 0.3, g = 0.3 are the paper's per-variant settings and sum to 1 (no plain DPO
rows); a single variant is e.g. `--p 0 --g 0` (SAIL-DP with r = 0.4). With prompt-only data every
example must be sampled: p + g = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robalign.data.collate import collate
from robalign.data.prompts import is_prompt_only_ids
from robalign.data.tokenize import TokenizedPair
from robalign.distributed import sum_over_processes
from robalign.errors import UserError
from robalign.logprobs import sequence_logps
from robalign.losses.online import DP, DPO, PP, PR, ROUTE_NAMES, draw_routes, sail_loss, self_label
from robalign.methods.base import StepResult
from robalign.methods.online import (
    OnlineMethod,
    labelled_reward_metrics,
    mean_or_zero,
    prompt_pairs,
    with_responses,
)
from robalign.online.draws import Draws
from robalign.online.generations import record
from robalign.pair_logps import dpo_margin
from robalign.settings import Params, setting


@dataclass
class SailParams(Params):
    """Everything sail is told: β and the route shares and coefficients (older configs: a `sail:` section)."""

    method = "sail"
    beta: float = setting(0.1, "Inverse temperature β of the implicit reward.", gt=0)
    r: float = setting(0.4, "SAIL-DP share: dataset pair relabelled by the policy's own Bradley–Terry draw.",
                       ge=0, le=1)
    p: float = setting(0.3, "SAIL-PP share: two policy samples labelled by the policy's own draw.", ge=0, le=1)
    g: float = setting(0.3, "SAIL-PR share: two policy samples labelled by the preference oracle.", ge=0, le=1)
    coef_dp: float = setting(0.2, "Weight of −½(log σ(βh))² on DP rows.", ge=0)
    coef_pp: float = setting(0.2, "Weight of −½(log σ(βh))² and of the score-function term on PP rows.", ge=0)
    coef_pr: float = setting(0.3, "Weight of the score-function term on PR rows.", ge=0)

    def check_values(self) -> None:
        if self.r + self.p + self.g > 1 + 1e-9:
            raise ValueError(f"sail.r + sail.p + sail.g must be <= 1 (the rest is plain DPO), got "
                             f"{self.r + self.p + self.g:g}")


class SailMethod(OnlineMethod):
    """SAIL on one micro-batch: route, sample the PP / PR prompts, label, one forward, `sail_loss`.

    The rewards/* and logps/* metrics are those of the pairs as labelled (winner first).

    Metrics:
        sail/frac_dpo: share of the micro-batch routed to plain DPO (likewise sail/frac_dp, sail/frac_pp,
            sail/frac_pr for the other routes).
        sail/self_swap_rate: share of DP and PP pairs whose self-label swapped the two responses.
        sail/self_label_term: mean of the −½·coef·(log σ(βh_w))² terms.
        sail/score_term: mean of the score-function terms.
        sail/baseline: the baseline b of the score-function term.
        online/len_y1: mean token length of the first sampled response (PP and PR examples).
        online/len_y2: mean token length of the second sampled response.
    """

    name = "sail"
    default_oracle = "bt:length"

    def __init__(self, params: SailParams | None = None, cfg=None):
        super().__init__(params or SailParams(), cfg)

    def step(self, policy, reference, batch) -> StepResult:
        tok = self._require_tokenizer()
        t, _ = self._tick()
        pairs = prompt_pairs(batch)
        s = self.params
        draws = Draws.take(len(pairs))  # global RNG: restored on resume, sliced per process
        routes = draw_routes(draws.routes, s.r, s.p, s.g)
        u_self = draws.self_label
        self._check_pairs(pairs, routes)
        sampled = [i for i, route in enumerate(routes.tolist()) if route in (PP, PR)]
        prompts = [pairs[i].prompt_ids for i in sampled]
        generated = dict(zip(sampled, self._sample(policy, prompts, [draws.seeds[i] for i in sampled])))
        texts = dict(zip(sampled, self._prompt_texts(prompts)))
        scored = [with_responses(p, generated[i]) if i in generated else p for i, p in enumerate(pairs)]
        work = batch if not sampled else collate(scored, tok.pad_token_id).to(batch.input_ids.device)

        lp = sequence_logps(policy, work).with_reference(reference.logps(work))  # one forward over all B pairs
        h = dpo_margin(lp)
        device = h.device
        routes, u_self = routes.to(device), u_self.to(device)
        y1_pref = torch.ones_like(routes, dtype=torch.bool)
        own = (routes == DP) | (routes == PP)
        y1_pref = torch.where(own, self_label(h, self.beta, u_self), y1_pref)
        oracle_rows = [i for i in sampled if int(routes[i]) == PR]
        labels = None
        if oracle_rows:
            labels = self.oracle.sample([texts[i] for i in oracle_rows], [generated[i].y1_text for i in oracle_rows],
                                        [generated[i].y2_text for i in oracle_rows],
                                        uniforms=draws.oracle[oracle_rows])
            idx = torch.tensor(oracle_rows, device=device)
            y1_pref = y1_pref.index_put((idx,), labels.y1_preferred.to(device))
        out = sail_loss(h, y1_pref, lp.chosen + lp.rejected, routes, beta=self.beta, coef_dp=s.coef_dp,
                        coef_pp=s.coef_pp, coef_pr=s.coef_pr, all_sum=sum_over_processes)
        self._record(t, pairs, routes, sampled, generated, texts, h, y1_pref, oracle_rows, labels)
        metrics = self._metrics(out, lp, routes, y1_pref, sampled)
        per_pair = {"loss": out.per_pair.detach(), "h": out.h_w, "route": routes.float(),
                    "swapped": (~y1_pref).float()}
        return StepResult(out.loss, metrics, per_pair)

    @staticmethod
    def _check_pairs(pairs: list[TokenizedPair], routes: torch.Tensor) -> None:
        for pair, route in zip(pairs, routes.tolist()):
            if route in (DPO, DP) and is_prompt_only_ids(pair.chosen_ids, pair.rejected_ids):
                raise UserError(f"sail: pair {pair.id!r} has no responses (a prompt-only row) but was routed "
                                f"to {ROUTE_NAMES[route].upper()}, which trains on the dataset pair; with "
                                "prompt-only data set sail.r = 0 and sail.p + sail.g = 1")

    def _record(self, t, pairs, routes, sampled, generated, texts, h, y1_pref, oracle_rows, labels):
        probs = torch.sigmoid(self.beta * h.detach()).cpu()
        pref = y1_pref.cpu()
        oracle_at = {i: k for k, i in enumerate(oracle_rows)}
        recs = []
        for i in sampled:
            if i in oracle_at:
                k = oracle_at[i]
                observed, gold = float(labels.observed_prob[k]), float(labels.gold_prob[k])
            else:
                observed, gold = float(probs[i]), None
            recs.append(record(pairs[i].id, generated[i], texts[i], ROUTE_NAMES[int(routes[i])], bool(pref[i]),
                               observed, gold))
        self._write(t, recs)

    def _metrics(self, out, lp, routes, y1_pref, sampled) -> dict[str, torch.Tensor]:
        metrics = labelled_reward_metrics(lp, y1_pref, self.beta)
        for code, name in enumerate(ROUTE_NAMES):
            metrics[f"sail/frac_{name}"] = (routes == code).float().mean()
        own = (routes == DP) | (routes == PP)
        metrics["sail/self_swap_rate"] = mean_or_zero((~y1_pref)[own])
        metrics["sail/self_label_term"] = out.extra.mean()
        metrics["sail/score_term"] = out.score.mean()
        metrics["sail/baseline"] = out.baseline
        idx = torch.tensor(sampled, dtype=torch.long, device=routes.device)
        metrics["online/len_y1"] = mean_or_zero(lp.chosen_lengths[idx])
        metrics["online/len_y2"] = mean_or_zero(lp.rejected_lengths[idx])
        return metrics


__all__ = ["SailMethod", "SailParams"]
