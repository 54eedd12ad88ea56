"""Issue-2 acceptance check: robalign's `dpo` and TRL's DPOTrainer (sigmoid) compute the same loss.

    python benchmarks/trl_first_step.py                       # tiny-llama and SmolLM2-135M
    python benchmarks/trl_first_step.py --models tiny-llama

At step 0 a policy that equals its reference gives loss = log 2 and rewards = 0 in any implementation, so
that alone proves little. Here the reference is the initial model and the policy is the same model with
seeded noise on every weight (w + noise·std(w)·ε, ε ~ N(0, 1)), handed to both frameworks (TRL via
`ref_model=`), so h ≠ 0. Both then take one plain-SGD step (no momentum, no clipping) and the second
batch is compared too, which checks the gradients and the update as well. Same weights, same tokenised
pairs in the same batches, fp32 CPU.

Tolerance: every number must agree to --rtol (1e-5) relative to its scale. The scale of loss, log-probs
and gradient norm is the number itself. rewards/* = β(lp_θ − lp_ref) is a small difference of two sums of
|lp| ≈ 10²–10³ nats; fp32 summation order alone moves each sum by ~|lp|·1e-7, so a reward is compared
against β·|lp| (the size of the terms it is the difference of), not against itself. Exit status 1 if
anything differs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile

import common
import torch
from _trl_runner import StepTimer, training_args


def perturbed(model, noise: float, seed: int):
    """A copy of `model` with w ← w + noise·std(w)·ε on every parameter (tied weights perturbed once)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            scale = p.std() if p.numel() > 1 else p.abs()
            p.add_(noise * scale * torch.randn(p.shape, generator=gen))
    return out


def spec_for(args, model_name: str, prepared: dict) -> dict:
    return {"config": "first_step", "model": model_name, "model_seed": 0, "lora": None, "seed": args.seed,
            "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr, "max_grad_norm": 0.0,
            "threads": args.threads, "total_steps": 2, "prepared": prepared}


def run_robalign(spec: dict, policy, reference, tokenizer) -> list[dict]:
    from robalign.config import build_config
    from robalign.data.pairs import PreferencePair
    from robalign.reference import FrozenCopyReference
    from robalign.trainer import Trainer

    cfg = build_config(overrides={
        "model.name": spec["model"], "model.lora_r": 0, "model.reference": "copy", "method.name": "dpo",
        "method.beta": 0.1, "data.max_length": spec["max_length"], "train.seed": spec["seed"],
        "train.batch_size": spec["batch_size"], "train.max_steps": 2, "train.optimizer": "sgd",
        "train.lr": spec["lr"], "train.schedule": "constant", "train.max_grad_norm": 0.0,
        "train.threads": spec["threads"], "train.progress": False,
        "train.output_dir": tempfile.mkdtemp(prefix="first-step-")})
    pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"], id=p["id"]) for p in spec["prepared"]["pairs"]]
    trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=[], model=copy.deepcopy(policy), tokenizer=tokenizer)
    # The reference is the *unperturbed* model, not a copy of the policy the Trainer was given.
    trainer.reference = FrozenCopyReference(reference)
    return [{k: float(v) for k, v in trainer.step().items()} for _ in range(2)]


def run_trl(spec: dict, policy, reference, tokenizer) -> list[dict]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    out_dir = tempfile.mkdtemp(prefix="first-step-trl-")
    args = DPOConfig(**training_args(spec, out_dir), beta=0.1, loss_type=["sigmoid"], optim="sgd")
    dataset = Dataset.from_list(common.trl_rows(spec["prepared"]))
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference).eval(), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    losses, compute_loss = [], trainer.compute_loss

    def recording(*a, **k):
        out = compute_loss(*a, **k)
        losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
        return out

    trainer.compute_loss = recording
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return [{**log, "loss": loss} for log, loss in zip(timer.logs, losses)]


def check_model(args, model_name: str, pairs) -> bool:
    from robalign.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_name, seed=0)
    prepared = common.prepare_pairs(tokenizer, pairs, n_pairs=2 * args.batch_size, seed=args.seed,
                                    max_length=args.max_length, batch_size=args.batch_size)
    policy = perturbed(model, args.noise, args.seed)
    spec = spec_for(args, model_name, prepared)
    rob = run_robalign(spec, policy, model, tokenizer)
    trl = run_trl(spec, policy, model, tokenizer)
    print(f"\n{model_name}: 2 x {args.batch_size} pairs, policy = reference + {args.noise}·std·N(0,1) noise, "
          f"SGD lr {args.lr}")
    print(f"  {'quantity':<26} {'robalign':>14} {'TRL':>14} {'|diff|':>9} {'scale':>9} {'diff/scale':>10}")
    ok = True
    beta = 0.1
    for step in (0, 1):
        r, t = rob[step], trl[step]
        lp = max(abs(r["logps/chosen"]), abs(r["logps/rejected"]))
        rows = [("loss", r["loss"], t["loss"], abs(r["loss"])),
                # β(lp_θ − lp_ref) is a small difference of two ~|lp| sums: fp32 summation order alone moves
                # each sum by ~|lp|·1e-7, so its error is measured against β·|lp|, not against itself.
                ("rewards/chosen", r["rewards/chosen"], t["rewards/chosen"], beta * lp),
                ("rewards/rejected", r["rewards/rejected"], t["rewards/rejected"], beta * lp),
                ("logps/chosen", r["logps/chosen"], t["logps/chosen"], abs(r["logps/chosen"])),
                ("grad_norm", r["grad_norm"], t["grad_norm"], abs(r["grad_norm"]))]
        for name, a, b, scale in rows:
            err = abs(a - b) / max(scale, 1e-12)
            good = err <= args.rtol
            ok &= good
            label = f"step {step + 1} {name}" + (" (after SGD)" if step and name == "loss" else "")
            print(f"  {label:<26} {a:>14.8f} {b:>14.8f} {abs(a - b):>9.2e} {scale:>9.2e} {err:>10.2e} "
                  f"{'ok' if good else 'DIFFERENT'}")
    if abs(rob[0]["loss"] - 0.6931471805599453) < 1e-6:
        print("  warning: the step-1 loss is log 2; the perturbation did not separate policy and reference")
        ok = False
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-llama,smollm2-135m-instruct")
    ap.add_argument("--noise", type=float, default=0.02, help="relative weight perturbation of the policy")
    ap.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the one update")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data", default=str(common.DATA_PATH))
    args = ap.parse_args(argv)
    args.threads = args.threads or common.cores()
    common.set_threads(args.threads)
    pairs = common.load_hh(args.data)
    results = {m: check_model(args, m, pairs) for m in args.models.split(",") if m}
    verdict = all(results.values())
    print("\n" + ("PASS" if verdict else "FAIL") + ": robalign dpo vs TRL DPOTrainer(sigmoid), rtol "
          f"{args.rtol}: " + ", ".join(f"{m} {'ok' if v else 'DIFFERENT'}" for m, v in results.items()))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
