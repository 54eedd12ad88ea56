"""Resident memory of a robalign DPO run, stage by stage (SmolLM2-135M, full fine-tune, live reference).

    python benchmarks/memory_stages.py [--steps 3]

Prints VmRSS / VmHWM (from /proc/self/status) after the imports, after loading the model, after building
the trainer (frozen reference copy included) and after each optimiser step, plus the parameter count and
the fp32 floor that docs/benchmarks.md derives from it (weights, reference copy, gradients, AdamW moments).
"""

from __future__ import annotations

import argparse
import tempfile

import common


def rss() -> str:
    mem = common.memory_mib()
    return f"RSS {mem['VmRSS']:6.0f} MB   peak {mem['VmHWM']:6.0f} MB"


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4, help="pairs per forward (4 / batch micro-batches per step)")
    args = ap.parse_args()
    common.set_threads(args.threads or common.cores())
    from robalign.config import build_config
    from robalign.models import load_model_and_tokenizer
    from robalign.trainer import Trainer

    print(f"{'after imports':24s} {rss()}")
    pairs = common.load_hh()[:4 * args.steps]
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    print(f"{'model loaded':24s} {rss()}")
    n = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config(overrides={"model.name": "smollm2-135m-instruct", "model.lora_r": 0,
                                      "data.max_length": 256, "data.eval_fraction": 0.0,
                                      "train.batch_size": args.batch, "train.grad_accum": 4 // args.batch,
                                      "train.max_steps": args.steps, "train.lr": 1e-6, "train.output_dir": out,
                                      "train.progress": False, "method.name": "dpo"})
        trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=[], model=model, tokenizer=tok)
        print(f"{'trainer built':24s} {rss()}")
        for k in range(args.steps):
            trainer.step()
            print(f"{f'after step {k + 1}':24s} {rss()}")
    mb = n * 4 / 2**20
    print(f"\n{n / 1e6:.1f}M parameters: {mb:.0f} MB each for weights, reference copy and gradients, "
          f"{2 * mb:.0f} MB for the AdamW moments = {5 * mb:.0f} MB before runtime and activations")


if __name__ == "__main__":
    main()
