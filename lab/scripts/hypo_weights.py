"""Where HyPO puts its weight under `length` noise: the relabelled pairs or the clean ones.

    .venv/bin/python lab/scripts/hypo_weights.py ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz \
        [--seeds 0,1,2] [--rates 0.1,0.4] [--model smollm2-135m-instruct] [--max-length 192]

HyPO's loss is softplus(−β(Δ_θ − max(0, Δ_ref))), with Δ = lp(chosen) − lp(rejected). Where the reference
agrees with the label (Δ_ref > 0) that is DPO; where it disagrees the reference is dropped, and at the start
of training (Δ_θ = Δ_ref < 0) the pair's gradient is DPO's times 2σ(−βΔ_ref), up to 2×. The script splits and
corrupts each seed's training pairs exactly as `robalign bench robustness` does, scores them with the
reference model (summed completion log-probs, the sweep's max_length) and prints, for relabelled and for
untouched pairs: how often the reference disagrees with the (noisy) label and HyPO's mean initial weight
÷ DPO's, and the share of HyPO's total initial weight that lands on relabelled pairs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from robalign.config import DataConfig
from robalign.data import inject_noise
from robalign.errors import UserError
from robalign.experiments.cells import split_file


def hypo_weight_ratio(delta_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """HyPO's per-pair gradient in Δ_θ ÷ DPO's, at Δ_θ = Δ_ref (an untrained policy): 2σ(β·max(0, −Δ_ref))."""
    return 2 * torch.sigmoid(beta * torch.clamp(-delta_ref, min=0))


def reference_margins(model, tokenizer, pairs, max_length: int, batch_size: int = 8) -> torch.Tensor:
    """Δ_ref = lp(chosen) − lp(rejected) of each pair (summed completion log-probs), tokenised as a sweep cell
    tokenises them; NaN for a pair the tokeniser skips as invalid."""
    from robalign.data.tokenize import tokenize_pairs
    from robalign.reference import FrozenCopyReference, reference_logps

    tokenized, _ = tokenize_pairs(tokenizer, pairs, max_length=max_length, skip_invalid=True,
                                  max_prompt_length=DataConfig(max_length=max_length).prompt_budget)
    chosen, rejected = reference_logps(FrozenCopyReference(model), tokenized, pad_id=tokenizer.pad_token_id,
                                       batch_size=batch_size, size=len(pairs))
    return chosen - rejected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("data", help="a preference file, as given to bench --data")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rates", default="0.1,0.4")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--train-pairs", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=192)
    a = ap.parse_args(argv)
    if not Path(a.data).is_file():
        print(f"hypo_weights: {a.data} not found (a preference file, as given to bench --data)", file=sys.stderr)
        return 2
    from robalign.models import load_model_and_tokenizer

    try:
        model, tok = load_model_and_tokenizer(a.model)
        print("| seed | rate | relabelled | ref disagrees: relabelled / untouched | HyPO weight ÷ DPO: relabelled / "
              "untouched | relabelled share of pairs / of HyPO weight |\n|---:|---:|---:|---:|---:|---:|")
        for seed in (int(s) for s in a.seeds.split(",")):
            train, _ = split_file(a.data, seed, train_pairs=a.train_pairs, eval_pairs=0)
            clean_delta = reference_margins(model, tok, train, a.max_length)
            for rate in (float(r) for r in a.rates.split(",")):
                noisy = inject_noise(train, "length", rate, seed)
                flipped = torch.tensor([p.is_flipped for p in noisy])
                delta = torch.where(flipped, -clean_delta, clean_delta)  # a relabelled pair swaps its replies
                fits = ~delta.isnan()
                w = hypo_weight_ratio(delta[fits], a.beta)
                f, d = flipped[fits], delta[fits]
                print(f"| {seed} | {rate:g} | {int(f.sum())} | {(d[f] < 0).float().mean():.2f} / "
                      f"{(d[~f] < 0).float().mean():.2f} | {w[f].mean():.3f} / {w[~f].mean():.3f} | "
                      f"{f.float().mean():.3f} / {(w[f].sum() / w.sum()):.3f} |")
    except UserError as err:
        print(f"hypo_weights: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
