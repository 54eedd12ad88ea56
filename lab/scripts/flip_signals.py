"""How well does a pair signal that needs no training flag flipped labels? (stage (d) of the study).

    .venv/bin/python lab/scripts/flip_signals.py [--seeds 0] [--pairs 256] [--rate 0.4]

For the training pairs a sweep cell of the built-in task sees (same split, same flips), the base model's
length-normalised margin M on the *observed* label, as `data.keep_fraction` computes it
(`robalign.pair_filter`); a low M flags a pair as likely flipped. Prints the flip AUROC of −M per seed, and
what keeping the highest-M share of the pairs would leave: kept pairs, and the flipped share among them.
"""

from __future__ import annotations

import argparse


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args(argv)

    from robalign.data import inject_noise
    from robalign.data.tokenize import tokenize_pairs
    from robalign.models import DEFAULT_MODEL, load_model_and_tokenizer
    from robalign.pair_filter import base_margins, filter_report, keep_most_agreeing
    from robalign.tasks.verifiable import make_preference_pairs

    model, tok = load_model_and_tokenizer(DEFAULT_MODEL)
    for seed in (int(s) for s in args.seeds.split(",")):
        noisy = inject_noise(make_preference_pairs(args.pairs, seed), "flip", args.rate, seed)
        data, _ = tokenize_pairs(tok, noisy, max_length=args.max_length, max_prompt_length=args.max_length // 2)
        margins = base_margins(model, data, pad_id=tok.pad_token_id)
        flipped = [p.is_flipped for p in data]
        for keep in (0.8, 0.7, 0.6, 0.5):
            report = filter_report(margins, keep_most_agreeing(margins, keep), flipped)
            if keep == 0.8:
                print(f"seed {seed}: {report['pairs']} pairs, {report['flipped_before']:.3f} flipped; flip AUROC "
                      f"of -M {report['flip_auroc']:.3f}")
            print(f"  keep {keep:.0%}: {report['kept']} pairs, flipped among kept {report['flipped_after']:.3f}")


if __name__ == "__main__":
    main()
