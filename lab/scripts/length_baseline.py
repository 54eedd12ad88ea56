"""What a length-biased judge alone scores on a sweep's clean held-out pairs, per seed.

    .venv/bin/python lab/scripts/length_baseline.py ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz \
        [--seeds 0,1,2] [--train-pairs 256] [--eval-pairs 64] [--rates 0.1,0.2,0.3,0.4]

Splits the file exactly as `robalign bench robustness` does for each seed, then prints: the held-out
accuracy of the ranker "the longer reply (in characters) wins" (ties count half), which is where a policy
that learned only length from `length` noise would land; and, in the training pairs, how many have the
shorter reply chosen (the candidates `length` noise may relabel) and how many it relabels at each rate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robalign.data import inject_noise
from robalign.data.noise import completion_length as chars  # what `length` noise compares
from robalign.errors import UserError
from robalign.experiments.cells import split_file


def longer_wins_accuracy(pairs) -> float:
    """Accuracy of ranking each pair by reply length alone; ties count half."""
    score = sum(1.0 if chars(p.chosen) > chars(p.rejected) else 0.5 if chars(p.chosen) == chars(p.rejected) else 0.0
                for p in pairs)
    return score / len(pairs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("data", help="a preference file, as given to bench --data")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-pairs", type=int, default=256)
    ap.add_argument("--eval-pairs", type=int, default=64)
    ap.add_argument("--rates", default="0.1,0.2,0.3,0.4")
    a = ap.parse_args(argv)
    if not Path(a.data).is_file():
        print(f"length_baseline: {a.data} not found (a preference file, as given to bench --data)", file=sys.stderr)
        return 2
    rates = [float(r) for r in a.rates.split(",")]
    print("| seed | held-out pairs | longer wins: accuracy | training pairs | shorter chosen | relabelled at "
          + " / ".join(f"{r:g}" for r in rates) + " |\n|---:|---:|---:|---:|---:|---:|")
    try:
        for seed in (int(s) for s in a.seeds.split(",")):
            train, held = split_file(a.data, seed, train_pairs=a.train_pairs, eval_pairs=a.eval_pairs)
            shorter = sum(chars(p.chosen) < chars(p.rejected) for p in train)
            relabelled = [sum(p.is_flipped for p in inject_noise(train, "length", r, seed)) for r in rates]
            print(f"| {seed} | {len(held)} | {longer_wins_accuracy(held):.3f} | {len(train)} | {shorter} | "
                  + " / ".join(map(str, relabelled)) + " |")
    except UserError as err:
        print(f"length_baseline: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
