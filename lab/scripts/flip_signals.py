"""How well does a pair signal that needs no training flag flipped labels? (stage (d) of the study).

    .venv/bin/python lab/scripts/flip_signals.py [--seeds 0] [--pairs 256] [--rate 0.4]

For the training pairs a sweep cell of the built-in task sees (same split, same flips), the base model's
length-normalised margin M on the *observed* label; a low M flags a pair as likely flipped. Prints the flip
AUROC of −M per seed, and what dropping the lowest-M share q of the pairs would leave: kept pairs, and the
flipped share among them.
"""

from __future__ import annotations

import argparse

import torch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args(argv)

    from robalign.data import inject_noise
    from robalign.data.tokenize import tokenize_pairs
    from robalign.evaluate import PreferenceEvaluator
    from robalign.losses.gapo import flip_auroc_ranked
    from robalign.models import DEFAULT_MODEL, load_model_and_tokenizer
    from robalign.tasks.verifiable import make_preference_pairs

    model, tok = load_model_and_tokenizer(DEFAULT_MODEL)
    for seed in (int(s) for s in args.seeds.split(",")):
        noisy = inject_noise(make_preference_pairs(args.pairs, seed), "flip", args.rate, seed)
        data, _ = tokenize_pairs(tok, noisy, max_length=args.max_length, max_prompt_length=args.max_length // 2)
        ev = PreferenceEvaluator(data, tok.pad_token_id)
        ev.evaluate(model)
        m = torch.empty(len(data))
        m[torch.tensor(ev.order)] = ev.last_margins["M"]
        flipped = torch.tensor([float(p.is_flipped) for p in data])
        print(f"seed {seed}: {len(data)} pairs, {int(flipped.sum())} flipped; flip AUROC of -M "
              f"{flip_auroc_ranked(-m, flipped).item():.3f}; observed-label agreement with M: clean "
              f"{(m[flipped == 0] > 0).float().mean():.3f}, flipped {(m[flipped == 1] > 0).float().mean():.3f}")
        order = torch.argsort(m)  # lowest M first
        for q in (0.2, 0.3, 0.4, 0.5):
            kept = order[int(q * len(m)):]
            print(f"  drop lowest {q:.0%}: keep {len(kept)}, flipped among kept {flipped[kept].mean():.3f}")


if __name__ == "__main__":
    main()
