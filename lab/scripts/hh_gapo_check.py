"""Issue 3's HH check: do GAPO's weights single out injected label flips on HH-RLHF harmless?

    .venv/bin/python lab/scripts/hh_gapo_check.py [--seeds 0,1,2] [--steps 64] [--out outputs/hh-gapo]

Per seed: HH-RLHF harmless split into training and held-out pairs (the held-out pairs stay clean), 20 % of
`--pairs` training pairs flipped (seeded), GAPO trained on them (SmolLM2-135M-Instruct, LoRA, the method's
defaults), then every training pair scored by `robalign score` at the trained model. Reports two readings
of "flipped pairs end with a lower weight": the weights logged during the last half of training (`gapo_summary.json`) and the weights of
all pairs at the final model (the score file), each as mean weight flipped vs clean and the flip AUROC
of −weight (0.5 = no signal), plus the AUROC of the final model's own margin for comparison. Every step
is cached: a finished run or score file is reused, so an interrupted check resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
CLI = [sys.executable, "-m", "robalign.cli"]


def run(args: list[str], log: Path):
    with open(log, "a") as fh:
        subprocess.run(CLI + args, check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)


def write_split(seed: int, args, train_path: Path, held_path: Path):
    """Training pairs (flipped at `args.rate`, seeded) and clean held-out pairs of one seed."""
    from robalign.data import inject_noise, load_pairs, train_eval_split, write_pairs
    from robalign.data.tokenize import tokenize_pair
    from robalign.errors import DataError
    from robalign.models import load_model_and_tokenizer

    _, tok = load_model_and_tokenizer("smollm2-135m-instruct")

    def fits(pair) -> bool:  # no pair is dropped later for length, so the flip rate is the one asked for
        try:
            return len(tokenize_pair(tok, pair, 0, max_length=10**9, max_prompt_length=0)) <= args.max_length
        except DataError:
            return False

    pairs = [p for p in load_pairs(str(HH), skip_invalid=True).pairs if fits(p)]
    train, held = train_eval_split(pairs, 0.2, seed, stream="hh-gapo-check")
    write_pairs(inject_noise(train[:args.pairs], "flip", args.rate, seed), train_path)
    write_pairs(held[:64], held_path)


def score_summary(path: Path) -> dict:
    from robalign.losses.gapo import flip_auroc_ranked

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    flags = torch.tensor([float(r["is_flipped"]) for r in rows], dtype=torch.float64)
    weight = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    margin = torch.tensor([r["margin"] for r in rows], dtype=torch.float64)
    return {
        "pairs": len(rows), "flipped_pairs": int((flags == 1).sum()),
        "weight_flipped_mean": float(weight[flags == 1].mean()), "weight_clean_mean": float(weight[flags == 0].mean()),
        "flip_auroc": float(flip_auroc_ranked(-weight, flags)),
        "margin_flip_auroc": float(flip_auroc_ranked(-margin, flags)),
    }


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--pairs", type=int, default=512, help="training pairs (64 more are held out, clean)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="outputs/hh-gapo")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        noisy, run_dir, scores = (out / f"flip{args.rate}_s{seed}.jsonl", out / f"gapo_s{seed}",
                                  out / f"scores_s{seed}.jsonl")
        log = out / f"s{seed}.log"
        held = out / f"heldout_s{seed}.jsonl"
        if not noisy.is_file():
            write_split(seed, args, noisy, held)
        if not (run_dir / "final").is_dir():
            print(f"seed {seed}: training GAPO ({args.steps} steps x {args.batch_size} pairs)", flush=True)
            run(["train", "--method.name", "gapo", "--data.train", str(noisy), "--data.eval", str(held),
                 "--data.max_length", str(args.max_length), "--data.skip_invalid", "true",
                 "--train.max_steps", str(args.steps),
                 "--train.batch_size", str(args.batch_size), "--train.lr", str(args.lr), "--train.warmup_steps", "2",
                 "--train.seed", str(seed), "--train.threads", str(args.threads), "--train.progress", "false",
                 "--train.output_dir", str(run_dir)], log)
        if not scores.is_file():
            print(f"seed {seed}: scoring {args.pairs} pairs at the trained model", flush=True)
            run(["score", "--model", str(run_dir / "final"), "--data", str(noisy), "--out", str(scores),
                 "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--skip-invalid"], log)
        during = json.loads((run_dir / "gapo_summary.json").read_text())
        results.append({"seed": seed, "during_training": during, "final_model": score_summary(scores)})
        print(json.dumps(results[-1]), flush=True)
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    lines = ["| seed | training: weight flipped / clean | training: flip AUROC | final model: weight flipped / clean "
             "| final model: flip AUROC | final model: margin AUROC |", "|---:|---|---:|---|---:|---:|"]
    for r in results:
        d, f = r["during_training"], r["final_model"]
        lines.append(f"| {r['seed']} | {d['weight_flipped_mean']:.3f} / {d['weight_clean_mean']:.3f} | "
                     f"{d['flip_auroc']:.3f} | {f['weight_flipped_mean']:.3f} / {f['weight_clean_mean']:.3f} | "
                     f"{f['flip_auroc']:.3f} | {f['margin_flip_auroc']:.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
