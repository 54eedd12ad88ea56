"""Where one GAPO step's time goes beyond the passes themselves (SmolLM2-135M, full fine-tune, 4 HH pairs).

    python benchmarks/gapo_phases.py [--scope backbone] [--steps 3]

Wraps the functions GAPO's anchor calls (forwards, the probe backward, the ASAM step, the changed-fraction
count, the weight save / apply / restore) with wall-clock timers and prints seconds per step for each,
after one untimed step. The trainer's own backward and optimiser step are the remainder of "total".
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import time

import common
import torch

import robalign.methods.gapo_anchor as G

TIMES: dict[str, float] = collections.defaultdict(float)


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
    return wrapper


@contextlib.contextmanager
def timed_perturbed(params, delta):
    """`gapo_anchor.perturbed` with its three weight passes timed separately (same operations)."""
    t0 = time.perf_counter()
    saved = [p.detach().clone() for p in params]
    TIMES["weights: save"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    for p, d in zip(params, delta):
        p.data.copy_(p.data.to(d.dtype) + d)
    TIMES["weights: apply θ + δ"] += time.perf_counter() - t0
    try:
        yield G.changed_fraction(((p.detach(), s) for p, s in zip(params, saved)), delta)
    finally:
        t0 = time.perf_counter()
        for p, s in zip(params, saved):
            p.data.copy_(s)
        TIMES["weights: restore"] += time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--scope", default="backbone", choices=["backbone", "all", "last_k_layers"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    common.set_threads(args.threads or common.cores())
    G.anchor_step = timed("ASAM anchor step", G.anchor_step)
    G.sequence_logps = timed("forwards (probe + anchor)", G.sequence_logps)
    G.changed_fraction = timed("changed-fraction count", G.changed_fraction)
    G.torch.autograd.grad = timed("probe backward", torch.autograd.grad)
    G.perturbed = timed_perturbed

    from robalign.config import build_config
    from robalign.models import load_model_and_tokenizer
    from robalign.trainer import Trainer

    pairs = common.load_hh()[:4 * (args.steps + 1)]
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config(overrides={"model.name": "smollm2-135m-instruct", "model.lora_r": 0,
                                      "data.max_length": 256, "data.eval_fraction": 0.0, "train.batch_size": 4,
                                      "train.max_steps": args.steps + 1, "train.lr": 1e-6, "train.output_dir": out,
                                      "train.progress": False, "method.name": "gapo", "gapo.scope": args.scope})
        trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=[], model=model, tokenizer=tok)
        trainer.step()  # warm-up
        TIMES.clear()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step()
        total = (time.perf_counter() - t0) / args.steps
    for name, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"{name:28s} {seconds / args.steps:7.3f} s/step")
    print(f"{'total':28s} {total:7.3f} s/step")


if __name__ == "__main__":
    main()
