"""What activation checkpointing costs in speed: forward + backward of the same batches under each mode.

    python benchmarks/recompute_cost.py [--modes none,selective,full] [--steps 6] [--reps 3]

SmolLM2-135M DPO, full fine-tune, live frozen-copy reference, the HH batches of `speed.py` (seed 0,
max_length 256). One policy copy per mode; every batch is run under each mode in turn (so drifts in the
machine's speed hit all modes alike), forward + backward only (no optimiser step, so every pass does the
same work). Prints each mode's total time relative to `none`; the first rep only warms up. The memory
side is `memory_phases.py --activation-checkpointing MODE`.
"""

from __future__ import annotations

import argparse
import copy
import time

import common


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--modes", default="none,selective,full")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    common.set_threads(args.threads or common.cores())
    import torch

    from robalign.data.collate import collate
    from robalign.methods.offline import PreferenceLossMethod
    from robalign.models import load_model_and_tokenizer
    from robalign.recompute import enable_activation_checkpointing
    from robalign.reference import FrozenCopyReference

    modes = args.modes.split(",")
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    toks, groups = common.speed_batches(tok, args.steps)
    batches = [collate([toks[i] for i in group], tok.pad_token_id) for group in groups]
    reference, method = FrozenCopyReference(model), PreferenceLossMethod("dpo", {"beta": 0.1})
    policies = {}
    for mode in modes:
        policies[mode] = copy.deepcopy(model).train()
        enable_activation_checkpointing(policies[mode], mode)
    del model

    def run(policy, batch) -> float:
        t = time.perf_counter()
        params = list(policy.parameters())
        torch.autograd.backward(method.step(policy, reference, batch).loss, inputs=params)
        for p in params:
            p.grad = None
        return time.perf_counter() - t

    total = dict.fromkeys(modes, 0.0)
    for rep in range(args.reps):
        for k, batch in enumerate(batches):
            times = {mode: run(policies[mode], batch) for mode in modes}
            if rep:
                for mode in modes:
                    total[mode] += times[mode]
            print(f"rep {rep} batch {k}: " + ", ".join(f"{m} {t:.2f} s" for m, t in times.items()), flush=True)
    base = total[modes[0]]
    for mode in modes:
        print(f"{mode}: {total[mode]:.1f} s over reps 2..{args.reps}, {total[mode] / base:.3f}x {modes[0]}")


if __name__ == "__main__":
    main()
