"""Gold reward of an online run's own training samples, step by step: does the policy improve during training?

    .venv/bin/python lab/scripts/online_curve.py RUN_DIR [RUN_DIR ...] [--window 8] [--out curve.png]

An online run samples two responses per prompt at every step and logs them (generations.jsonl); on the
built-in verifiable task the gold checker scores them after the fact, so the run's learning curve of gold
reward (of T = 0.9 samples from the current policy) costs no extra generation. Prints, per window of
`--window` steps, the mean gold reward of the window's samples with a 95 % interval (normal, over its
samples), and the difference last window − first window; `--out` draws the curves of all runs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def step_rewards(run: Path) -> dict[int, list[float]]:
    """Gold reward of every logged training sample, by step."""
    from robalign.tasks.verifiable import VerifiableReward

    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines() if line]
    prompts = [r["prompt"] for r in rows for _ in (0, 1)]
    texts = [y for r in rows for y in (r["y1"], r["y2"])]
    scores = VerifiableReward()(prompts, texts).tolist()
    out: dict[int, list[float]] = {}
    for r, a, b in zip(rows, scores[0::2], scores[1::2]):
        out.setdefault(int(r["step"]), []).extend((a, b))
    return out


def windows(by_step: dict[int, list[float]], width: int) -> list[tuple[int, int, float, float]]:
    """(first step, last step, mean, half-width of a 95 % interval) per window of `width` steps."""
    steps = sorted(by_step)
    out = []
    for i in range(0, len(steps), width):
        chunk = steps[i:i + width]
        xs = [x for s in chunk for x in by_step[s]]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / max(len(xs) - 1, 1)
        out.append((chunk[0], chunk[-1], mean, 1.96 * math.sqrt(var / len(xs))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    curves = {}
    for run in args.runs:
        rows = windows(step_rewards(run), args.window)
        curves[run.name] = rows
        print(f"{run}:")
        for lo, hi, mean, half in rows:
            print(f"  steps {lo:>3}–{hi:<3} gold reward {mean:.3f} ± {half:.3f}")
        first, last = rows[0], rows[-1]
        print(f"  last − first window: {last[2] - first[2]:+.3f} ± {math.hypot(first[3], last[3]):.3f}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, rows in curves.items():
            mid = [(lo + hi) / 2 for lo, hi, _, _ in rows]
            ax.errorbar(mid, [m for _, _, m, _ in rows], yerr=[h for *_, h in rows], label=name, capsize=2)
        ax.set_xlabel("step")
        ax.set_ylabel("gold reward of training samples")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
