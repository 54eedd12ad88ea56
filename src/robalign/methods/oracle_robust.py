"""Oracle-robust online alignment: online DPO on pairs sampled from the policy and labelled by an oracle that may
deviate from the ideal one by up to ρ per preference probability; the worst case over that set is the
closed-form sensitivity penalty ρβ|h|, trained by projected stochastic gradient steps, R-SCGD (Li, Gaur,
Aggarwal 2026, "Oracle-Robust Online Alignment for LLMs", arXiv 2602.20457).

Loss: mean_i[ℓ_i + sf_coef·(stopgrad(ℓ_i) − b)·(lp_θ(y1) + lp_θ(y2))]
      ℓ_i = −log σ(βh(y_w, y_l)) + ρβ|h(y1, y2)|,  b = mean_i stopgrad(ℓ_i)
      its gradient estimates that of L^W_ρ = L_SAIL + ρβ·E|h|

Per micro-batch: the prompts of the batch (the dataset responses are not used), two samples each from
π_θ, labels from the observed oracle, and the surrogate above, whose gradient is the estimate G of the
robust objective L^W_ρ (sf_coef = 1: the paper's gradient; 0: the behaviour-policy approximation). β and
ρ are `method.beta` (0.1) and `method.rho` (0.1).

Around the step:
- projection: after each optimiser step, the trainable parameters are projected onto the ball of radius
  `oracle_robust.projection_radius` around θ_ref = θ_0 (the trainable parameters at step 0) by the
  `after_optimizer_step` hook. θ_0 is also stored as `iterates/iterate-00000000.safetensors`, from which
  a resumed run restores the centre.
- output: 'last' (the final weights, `final/`) or 'random' (the theory's output): θ_t is saved every
  `iterate_every` steps to `iterates/`, and `finalize` draws one of the saved θ_t with t < T uniformly
  (seeded by `train.seed`), writes it as a loadable model to `output/` and records the choice in
  `output_iterate.json`.
- optional proximal refinement from the output (`prox_steps` > 0): K projected SGD steps on
  L^W_ρ(θ) + ‖θ − θ_R‖²/(2 λ_env), stopping when the mini-batch residual falls below `prox_eps`;
  written to `output/`.
Plain SGD with a constant step is the theory's optimiser: pass `--optimizer sgd --schedule constant`
(`train.optimizer` is global; AdamW works too). Projection assumes unsharded parameters (DDP, not FSDP).

This module wires the method; the pieces: `oracle_robust_iterates` (the projection, the saved iterates,
the output choice), `oracle_robust_prox` (the proximal refinement), `robalign.methods.online` (sampling,
labels, the generation record); the per-pair terms are in `robalign.losses.online`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from robalign import atomic
from robalign.blocks import unwrap_policy
from robalign.data.collate import collate
from robalign.distributed import is_main, sum_over_processes
from robalign.errors import UserError
from robalign.logprobs import sequence_logps
from robalign.losses.online import OnlineLossOutput, oracle_robust_loss
from robalign.methods.base import StepResult
from robalign.methods.online import (
    OnlineMethod,
    gold_agreement,
    labelled_reward_metrics,
    prompt_pairs,
    with_responses,
)
from robalign.methods.oracle_robust_iterates import (
    ITERATES,
    choose_output,
    iterate_name,
    list_iterates,
    model_at,
    project_weights_onto_ball,
    save_iterate,
    save_output_model,
    trainable,
)
from robalign.methods.oracle_robust_prox import ProxResult, proximal_refine_model
from robalign.online.draws import Draws
from robalign.online.generations import record
from robalign.pair_logps import dpo_margin
from robalign.settings import Params, setting


@dataclass
class OracleRobustParams(Params):
    """Everything oracle_robust is told: β, ρ, the score-function weight, the projection, the output iterate
    and the proximal refinement (older configs: an `oracle_robust:` section)."""

    method = "oracle_robust"
    beta: float = setting(0.1, "Inverse temperature β of the implicit reward.", gt=0)
    rho: float = setting(0.1, "Robustness radius ρ of the penalty ρβ|h(y1, y2)|.", ge=0, lt=0.5)
    sf_coef: float = setting(1.0, "Weight of the score-function term: 1 = the paper's gradient, 0 = the "
                             "behaviour-policy approximation.", ge=0)
    projection_radius: float | None = setting(None, "Radius D of the projection ball around θ_ref over the "
                                              "trainable parameters (None or 0 = no projection).", ge=0,
                                              optional=True)
    output: str = setting("last", "Which iterate is the output: 'last' (final/) or 'random' (the theory's "
                          "uniformly random saved iterate, written to output/ and named in output_iterate.json).",
                          choices=("last", "random"))
    iterate_every: int = setting(10, "With output 'random': save θ_t to iterates/ every N optimiser steps.", ge=1)
    prox_steps: int = setting(0, "Proximal refinement steps K from the output iterate (0 = none).", ge=0)
    prox_lambda: float = setting(1.0, "λ_env of the proximal term ‖θ − θ_R‖²/(2λ_env) (take λ_env < 1/κ).", gt=0)
    prox_eps: float = setting(1e-3, "Stop refining once the mini-batch residual is below ε_prox.", ge=0)
    prox_lr: float = setting(0.0, "Step size of the refinement (0 = train.lr).", ge=0)

    def whole_weights_problem(self) -> str | None:
        if not self.projection_radius:
            return None
        return "oracle_robust.projection_radius projects whole weights (set it to 0 to train without the projection)"


class OracleRobustMethod(OnlineMethod):
    """R-SCGD: sample, label by the observed oracle, robust surrogate with the score-function term.

    The rewards/* and logps/* metrics are those of the pairs as labelled by the observed oracle (winner first).

    Metrics:
        online/oracle_agreement: share of observed labels that pick the gold oracle's preferred response
            (ties count ½).
        online/observed_prob: mean probability P(y1 ≻ y2) of the observed oracle.
        online/abs_h: mean |h| of the sampled pairs.
        online/penalty: mean sensitivity penalty ρβ|h|.
        online/sf_term: mean score-function term.
        online/baseline: the baseline b of the score-function term.
        online/len_y1: mean token length of the first sampled response.
        online/len_y2: mean token length of the second sampled response.
        online/projection_active: 1 when the projection moved the weights after the previous optimiser step.
        online/dist_to_ref: ‖θ − θ_ref‖ over the trainable parameters after the projection (only with
            projection_radius).
    """

    name = "oracle_robust"
    default_oracle = "bt:length+adversarial:0.1"

    def __init__(self, params: OracleRobustParams | None = None, cfg=None):
        super().__init__(params or OracleRobustParams(), cfg)
        self.rho = self.params.rho
        self.seed = cfg.train.seed if cfg is not None else 0
        self.centre: list[torch.Tensor] | None = None
        self._pending_centre: dict | None = None  # θ_0 read back on resume
        self.projected, self.distance = torch.zeros(()), torch.zeros(())
        self.recent: deque = deque(maxlen=8)  # micro-batches kept for proximal refinement
        self.model = self.reference = None

    # ---------------------------------------------------------------------------------- hooks
    def begin(self, out_dir, step: int = 0, resumed: bool = False) -> None:
        super().begin(out_dir, step, resumed)
        self.centre, self._pending_centre = None, None  # fresh: θ_0 at the first step; resumed: from disk
        folder = self._iterate_dir()
        if folder is None:
            return
        for t, path in list_iterates(folder):
            if (not resumed or t > step) and is_main():
                path.unlink()  # a fresh run, or iterates past the checkpoint (recomputed identically)
        first = folder / iterate_name(0)
        if resumed and self.params.projection_radius:
            if not first.is_file():
                raise UserError(f"oracle_robust: cannot restore the projection centre: {first} is missing")
            self._pending_centre = load_file(str(first))

    def after_optimizer_step(self, model) -> None:
        """θ ← Proj_Θ(θ) after the optimiser step (R-SCGD); records whether it was active."""
        if not self.params.projection_radius:
            return
        params = [p for _, p in trainable(model)]
        active, dist = project_weights_onto_ball(params, self._centre(model), self.params.projection_radius)
        device = params[0].device
        self.projected = torch.tensor(float(active), device=device)
        self.distance = torch.tensor(dist, device=device)

    # ----------------------------------------------------------------------------------- step
    def step(self, policy, reference, batch) -> StepResult:
        t, first = self._tick()
        self.model, self.reference = unwrap_policy(policy), reference
        if first:
            self._at_step_start(policy, t)
        if self.params.prox_steps:
            self.recent.append(batch)
        out, ctx = self.objective(policy, reference, batch)
        self._write(t, ctx["records"])
        return StepResult(out.loss, self._metrics(out, ctx), {"loss": out.per_pair.detach(), "h": out.h_w})

    def objective(self, policy, reference, batch) -> tuple[OnlineLossOutput, dict]:
        """Samples, labels and scores one micro-batch; returns the surrogate and what it saw."""
        tok = self._require_tokenizer()
        pairs = prompt_pairs(batch)
        draws = Draws.take(len(pairs))  # global RNG: restored on resume, sliced per process
        prompts = [p.prompt_ids for p in pairs]
        generated = self._sample(policy, prompts, draws.seeds)
        texts = self._prompt_texts(prompts)
        labels = self.oracle.sample(texts, [g.y1_text for g in generated], [g.y2_text for g in generated],
                                    uniforms=draws.oracle)
        scored = [with_responses(p, g) for p, g in zip(pairs, generated)]
        work = collate(scored, tok.pad_token_id).to(batch.input_ids.device)
        lp = sequence_logps(policy, work).with_reference(reference.logps(work))  # one forward over y1 and y2 rows
        h = dpo_margin(lp)
        y1_pref = labels.y1_preferred.to(h.device)
        out = oracle_robust_loss(h, y1_pref, lp.chosen + lp.rejected, beta=self.beta, rho=self.rho,
                                 sf_coef=self.params.sf_coef, all_sum=sum_over_processes)
        recs = [record(p.id, g, x, "oracle", w, o, gp) for p, g, x, w, o, gp in
                zip(pairs, generated, texts, labels.y1_preferred.tolist(), labels.observed_prob.tolist(),
                    labels.gold_prob.tolist())]
        return out, {"lp": lp, "labels": labels, "y1_pref": y1_pref, "records": recs}

    def _metrics(self, out: OnlineLossOutput, ctx: dict) -> dict[str, torch.Tensor]:
        lp, labels, device = ctx["lp"], ctx["labels"], out.loss.device
        metrics = labelled_reward_metrics(lp, ctx["y1_pref"], self.beta)
        agree = gold_agreement(labels.y1_preferred, labels.gold_prob)
        metrics.update({
            "online/oracle_agreement": agree.float().mean().to(device),
            "online/observed_prob": labels.observed_prob.float().mean().to(device),
            "online/abs_h": out.h_w.abs().mean(),
            "online/penalty": out.extra.mean(),
            "online/sf_term": out.score.mean(),
            "online/baseline": out.baseline,
            "online/len_y1": lp.chosen_lengths.mean(),
            "online/len_y2": lp.rejected_lengths.mean(),
            # Of the update that produced the current weights (the hook runs after this step's metrics).
            "online/projection_active": self.projected.to(device),
        })
        if self.params.projection_radius:
            metrics["online/dist_to_ref"] = self.distance.to(device)
        return metrics

    # -------------------------------------------------------------------------------- iterates
    def _iterate_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / ITERATES

    def _centre(self, model) -> list[torch.Tensor]:
        if self.centre is None:
            if self._pending_centre is None:
                raise RuntimeError("oracle_robust: the projection centre θ_0 is set at the first step")
            self.centre = [self._pending_centre[n].to(p.device, p.dtype) for n, p in trainable(model)]
        return self.centre

    def _at_step_start(self, policy, t: int) -> None:
        """Before the first micro-step of step t: keep θ_0 as the centre, save θ_t when it is an iterate."""
        if t == 0 and self.params.projection_radius and self.centre is None:
            self.centre = [p.detach().clone() for _, p in trainable(policy)]
        radius = self.params.projection_radius
        save = (self.params.output == "random" and t % self.params.iterate_every == 0) or (t == 0 and radius)
        folder = self._iterate_dir()
        if save and folder is not None and is_main():
            save_iterate(policy, folder, t)

    def steps_done(self) -> int:
        return self.start_step + self.micro // self.grad_accum

    # -------------------------------------------------------------------------------- finalize
    def finalize(self, out_dir) -> None:
        """Chooses the output iterate, optionally refines it, writes output/ and output_iterate.json."""
        out = Path(out_dir)
        choice, weights = choose_output(out, self.params.output, self.steps_done(), self.seed)
        refine = bool(self.params.prox_steps and self.recent)
        if self.model is not None and (weights is not None or refine):
            model = model_at(self.model, weights)
            if refine:
                choice["prox"] = self._refine(model).__dict__
            save_output_model(model, out / "output", self.tokenizer)
            choice["model_dir"] = "output"
        atomic.write_text(out / "output_iterate.json", json.dumps(choice, indent=2) + "\n")

    def _refine(self, model) -> ProxResult:
        lr = self.params.prox_lr or (self.cfg.train.lr if self.cfg is not None else 1e-3)
        centre = self._centre(model) if self.params.projection_radius else None
        return proximal_refine_model(lambda m, b: self.objective(m, self.reference, b)[0].loss, model,
                                     list(self.recent), steps=self.params.prox_steps,
                                     lam_env=self.params.prox_lambda, eps_prox=self.params.prox_eps, lr=lr,
                                     centre=centre, radius=self.params.projection_radius)


__all__ = ["OracleRobustMethod", "OracleRobustParams"]
