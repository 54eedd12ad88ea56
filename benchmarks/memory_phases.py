"""Where a robalign DPO step peaks: VmHWM per phase (forward, backward, optimiser) of each micro-batch.

    python benchmarks/memory_phases.py [--batch 4] [--steps 3] [--activation-checkpointing selective]
    MALLOC_TRIM_THRESHOLD_=0 python benchmarks/memory_phases.py      # glibc returns freed memory at once

SmolLM2-135M, full fine-tune, live frozen-copy reference, 4 HH pairs per optimiser step split into
micro-batches of `--batch` pairs. The peak counter is reset (/proc/self/clear_refs) before each phase, so
each line is that phase's own peak; "between steps" is the resident set after the step.
"""

from __future__ import annotations

import argparse
import tempfile

import common

from robalign.config import ACTIVATION_CHECKPOINTING


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--batch", type=int, default=4, help="pairs per forward (4 / batch micro-batches per step)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--activation-checkpointing", default="none", choices=ACTIVATION_CHECKPOINTING)
    args = ap.parse_args()
    common.set_threads(args.threads or common.cores())
    from robalign.config import build_config
    from robalign.models import load_model_and_tokenizer
    from robalign.trainer import Trainer

    pairs = common.load_hh()[:4 * (args.steps + 1)]
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as out:
        cfg = build_config(overrides={
            "model.name": "smollm2-135m-instruct", "model.lora_r": 0, "data.max_length": 256,
            "data.eval_fraction": 0.0, "train.batch_size": args.batch, "train.grad_accum": 4 // args.batch,
            "train.max_steps": args.steps, "train.lr": 1e-6, "train.output_dir": out, "train.progress": False,
            "method.name": "dpo", "train.activation_checkpointing": args.activation_checkpointing})
        trainer = Trainer(cfg, train_pairs=pairs, eval_pairs=[], model=model, tokenizer=tok)
        method_step, backward, opt_step = trainer.method.step, trainer.acc.backward, trainer.optimizer.step

        def measured(name, fn):
            def run(*a, **k):
                common.reset_peak()
                result = fn(*a, **k)
                mem = common.memory_mib()
                print(f"    {name:9s} peak {mem['VmHWM']:6.0f} MiB   RSS after {mem['VmRSS']:6.0f} MiB")
                return result
            return run

        trainer.method.step = measured("forward", method_step)
        trainer.acc.backward = measured("backward", backward)
        trainer.optimizer.step = measured("optimiser", opt_step)
        for k in range(args.steps):
            print(f"step {k + 1}")
            trainer.step()
            print(f"    between steps: RSS {common.memory_mib()['VmRSS']:.0f} MiB")


if __name__ == "__main__":
    main()
