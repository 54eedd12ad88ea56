"""Online alignment under an adversarial oracle (issue 4): oracle-robust R-SCGD vs SAIL-PR vs online DPO.

    python benchmarks/online.py --out benchmarks/results/online

Setting. SmolLM2-135M-Instruct with LoRA r=16 on the built-in verifiable-instructions task. The gold
reward is the task's checker (`VerifiableReward`, score in [0, 1]); the training labels come from an
observed oracle that a pointwise adversary has moved ρ toward the worse answer (`--oracle`, default
`bt:verifiable:0.1+adversarial:0.2`: Bradley–Terry over the checker at τ = 0.1, so the gold preference is
sharp, then |P_obs − P⋆| = 0.2 against the gold, SPEC §5 and §7). Each method samples two responses per
training prompt from the current policy, asks the observed oracle, and updates:

| name          | method          | settings                                     | loss per pair (h = margin, β = 0.1)        |
|---------------|-----------------|----------------------------------------------|--------------------------------------------|
| oracle_robust | `oracle_robust` | method.rho = ρ (`--rho`), sf_coef = 1         | softplus(−βh_w) + ρβ·|h| + score function    |
| sail_pr       | `sail`          | sail.r = 0, sail.p = 0, sail.g = 1 (PR only)   | softplus(−βh_w) + 0.3·score function        |
| online_dpo    | `oracle_robust` | method.rho = 0, oracle_robust.sf_coef = 0      | softplus(−βh_w)                             |

`online_dpo` is plain online DPO: with ρ = 0 the sensitivity penalty ρβ|h| vanishes and with sf_coef = 0
the score-function term vanishes (SPEC §5: ℓ_i = softplus(−βh(y_w, y_l)) + ρβ|h|, G = mean_i[∇ℓ_i +
sf_coef·(ℓ_i − b)(∇lp(y1) + ∇lp(y2))]), leaving the DPO loss on on-policy pairs with the observed labels,
the same sampling and labelling code path as the other two, and gradients only through h.

Every run has the same budget: the same steps, batch (prompts per step), max_new_tokens, sampling
temperature, learning rate (AdamW, constant schedule), base model and LoRA initialisation for a seed, and
the training prompts `make_preference_pairs(steps × batch, seed)` (only their prompts are used).
After training, `robalign.evaluate_generation.generation_eval` compares the policy with its reference
(the LoRA model with adapters disabled, i.e. the base model) on held-out prompts `make_prompts(N,
seed=10_000)`: mean gold reward of greedy and sampled (T = 0.9) generations, gold win rate against the
reference (ties ½), and KL(π‖π_ref) on samples from π.

Writes `<out>/online.json` (settings, the exact command, every run, mean ± std over seeds),
`<out>/online.md` (the table) and per run `<out>/runs/<method>-s<seed>/` (metrics.jsonl,
generations.jsonl of training, eval_generations.jsonl, result.json). A run whose result.json holds the
same settings is reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

METHODS = {
    "oracle_robust": lambda a: {"method": {"name": "oracle_robust", "rho": a.rho},
                                "oracle_robust": {"sf_coef": 1.0}},
    "sail_pr": lambda a: {"method": {"name": "sail"}, "sail": {"r": 0.0, "p": 0.0, "g": 1.0}},
    "online_dpo": lambda a: {"method": {"name": "oracle_robust", "rho": 0.0}, "oracle_robust": {"sf_coef": 0.0}},
}
TABLE = (("gen/reward_greedy", "gold reward (greedy)"), ("gen/reward_sampled", "gold reward (T=0.9)"),
         ("gen/win_rate_greedy", "win rate vs ref (greedy)"), ("gen/win_rate_sampled", "win rate vs ref (T=0.9)"),
         ("gen/kl", "KL(π‖π_ref)"), ("train/oracle_agreement", "oracle = gold"), ("seconds", "seconds / run"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="optimiser steps per run")
    ap.add_argument("--batch-size", type=int, default=4, help="training prompts per step (2 samples each)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="most tokens per sample, training and eval")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--eval-prompts", type=int, default=24, help="held-out prompts for generation_eval")
    ap.add_argument("--eval-samples", type=int, default=1, help="sampled completions per held-out prompt")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    ap.add_argument("--oracle", default="bt:verifiable:0.1+adversarial:0.2", help="observed oracle (SPEC §7)")
    ap.add_argument("--rho", type=float, default=0.2, help="ρ of oracle_robust (the adversary's budget)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=0.9, help="sampling temperature, training and eval")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = the cores of this process)")
    ap.add_argument("--save-every", type=int, default=10,
                    help="checkpoint every N steps, so that a killed run resumes from its last checkpoint")
    ap.add_argument("--out", default="benchmarks/results/online")
    args = ap.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.method_list if m not in METHODS]
    if unknown or not args.method_list or not args.seed_list:
        ap.error(f"--methods from {', '.join(METHODS)} and at least one seed (got {args.methods!r}, {args.seeds!r})")
    return args


def settings(args) -> dict:
    """Everything a run's result depends on (a stored result with other settings is recomputed)."""
    keys = ("steps", "batch_size", "max_new_tokens", "eval_prompts", "eval_samples", "oracle", "rho", "beta", "lr",
            "temperature", "model", "lora_r")
    return {k: getattr(args, k) for k in keys}


def run_config(args, method: str, seed: int, out: Path):
    from robalign.config import build_config

    tree = METHODS[method](args)
    tree["method"]["beta"] = args.beta
    tree.update({
        "model": {"name": args.model, "lora_r": args.lora_r},
        "online": {"oracle": args.oracle, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature},
        "train": {"output_dir": str(out), "seed": seed, "batch_size": args.batch_size, "max_steps": args.steps,
                  "lr": args.lr, "schedule": "constant", "warmup_steps": 0, "optimizer": "adamw",
                  "eval_at_start": False, "save_final": False, "progress": False, "save_every": args.save_every},
    })
    return build_config(tree)


def train_metrics(run_dir: Path) -> dict:
    """Means over the run of the training loss, and of the oracle's agreement with the gold on the labels.

    Agreement is read from generations.jsonl (every method records its oracle-labelled pairs there):
    1 where the observed label picks the gold-preferred sample, 0 where not, ½ on gold ties.
    """
    from robalign import jsonl

    rows = jsonl.read_rows(run_dir / "metrics.jsonl")
    out = {"train/loss": statistics.fmean(r["loss"] for r in rows if "loss" in r)}
    gens = jsonl.read_rows(run_dir / "generations.jsonl")
    agree = [0.5 if g["gold_prob"] == 0.5 else float(g["y1_preferred"] == (g["gold_prob"] > 0.5))
             for g in gens if g.get("gold_prob") is not None]
    if agree:
        out["train/oracle_agreement"] = statistics.fmean(agree)
    return out


def run_one(args, method: str, seed: int, base, tok, eval_prompts, root: Path, ref_cache: dict) -> dict:
    from robalign import atomic, jsonl
    from robalign.evaluate_generation import generation_eval
    from robalign.rundir import resumable
    from robalign.tasks.verifiable import VerifiableReward, make_preference_pairs
    from robalign.trainer import Trainer

    out = root / "runs" / f"{method}-s{seed}"
    done = out / "result.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("settings") == settings(args):
            print(f"{method} seed {seed}: reusing {done}", flush=True)
            return old
    t0 = time.perf_counter()
    cfg = run_config(args, method, seed, out)
    train = make_preference_pairs(args.steps * args.batch_size, seed)  # the methods use only the prompts
    trainer = Trainer(cfg, train_pairs=train, eval_pairs=[], model=copy.deepcopy(base), tokenizer=tok)
    # A run killed before its result.json resumes from its last checkpoint (exactly: the trainer restores the
    # sampling RNG too); one killed before its first checkpoint, or run with other settings, starts over.
    resume = resumable(out, cfg)
    trainer.train(resume=resume, overwrite=not resume)
    t_train = time.perf_counter() - t0
    ev = generation_eval(trainer.model, None, tok, eval_prompts, VerifiableReward(), adapter_disabled=True,
                         n_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, seed=10_000, reference_cache=ref_cache)
    gens = ev.pop("generations")
    jsonl.write_rows(out / "eval_generations.jsonl", gens)
    result = {"method": method, "seed": seed, "settings": settings(args), **ev, **train_metrics(out),
              "train_seconds": t_train, "eval_seconds": time.perf_counter() - t0 - t_train,
              "seconds": time.perf_counter() - t0}
    atomic.write_json(done, result, indent=2)
    print(f"{method} seed {seed}: " + ", ".join(f"{k} {result[k]:.3f}" for k, _ in TABLE if k in result), flush=True)
    return result


def summarise(results: list[dict], methods: list[str]) -> dict:
    """{method: {metric: {"mean", "std", "n"}}}, std the sample standard deviation over seeds (0 for one seed)."""
    summary = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        summary[method] = {}
        for key, _ in TABLE:
            vals = [r[key] for r in rows if key in r]
            if vals:
                summary[method][key] = {"mean": statistics.fmean(vals), "n": len(vals),
                                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return summary


def markdown(summary: dict, results: list[dict], args, command: str) -> str:
    ref = results[0]
    lines = [
        "# Online alignment under an adversarial oracle",
        "",
        f"`{args.model}` + LoRA r={args.lora_r}; verifiable-instructions task; observed oracle `{args.oracle}`; "
        f"{args.steps} steps × {args.batch_size} prompts × 2 samples, max_new_tokens {args.max_new_tokens}, "
        f"T = {args.temperature}, AdamW lr {args.lr} (constant), β = {args.beta}; oracle_robust ρ = {args.rho}. "
        f"Evaluation: {args.eval_prompts} held-out prompts (`make_prompts(N, seed=10_000)`), "
        f"{args.eval_samples} sample(s) per prompt. Mean ± std over seeds {args.seeds}.",
        "",
        "online_dpo = `oracle_robust` with method.rho = 0 and oracle_robust.sf_coef = 0: on-policy pairs, "
        "observed labels, plain DPO loss. sail_pr = `sail` with r = p = 0, g = 1.",
        "",
        "| method | " + " | ".join(label for _, label in TABLE) + " |",
        "|---|" + "---|" * len(TABLE),
    ]
    for method, row in summary.items():
        cells = []
        for key, _ in TABLE:
            s = row.get(key)
            cells.append("–" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1
                         else f"{s['mean']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Reference (base model, adapters disabled): gold reward greedy {ref['gen/ref_reward_greedy']:.3f}, "
                  f"sampled {ref['gen/ref_reward_sampled']:.3f}.", "", "Command:", "", f"    {command}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    from robalign.models import load_model_and_tokenizer
    from robalign.tasks.verifiable import make_prompts

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/online.py", *argv])
    base, tok = load_model_and_tokenizer(args.model)
    eval_prompts = [[{"role": "user", "content": p.text}] for p in make_prompts(args.eval_prompts, seed=10_000)]
    t0 = time.perf_counter()
    ref_cache: dict = {}  # every run's reference is the same frozen base model: decode it once
    results = [run_one(args, m, s, base, tok, eval_prompts, root, ref_cache)
               for s in args.seed_list for m in args.method_list]
    summary = summarise(results, args.method_list)
    report = {"command": command, "settings": settings(args), "seeds": args.seed_list, "methods": args.method_list,
              "torch_threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t0,
              "summary": summary, "runs": results}
    (root / "online.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(summary, results, args, command)
    (root / "online.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
