"""One forward for a whole 4-pair batch vs one forward per pair (gradients accumulated), same pairs.

    python benchmarks/forward_chunks.py [--steps 6] [--reps 2]

SmolLM2-135M DPO, full fine-tune, live frozen-copy reference, the HH batches of `speed.py` (seed 0,
max_length 256). Times forward + backward (no optimiser) of each batch both ways, alternating, and prints
the per-batch ratio split / whole: what smaller micro-batches (less activation memory) cost in speed.
"""

from __future__ import annotations

import argparse
import time

import common


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2, help="repetitions; the first only warms up, so at least 2")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.reps < 2:
        ap.error("--reps must be at least 2: the first repetition is warm-up and is not timed")
    common.set_threads(args.threads or common.cores())
    import torch

    from robalign.data.collate import collate
    from robalign.methods.offline import PreferenceLossMethod
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import FrozenCopyReference

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    toks, groups = common.speed_batches(tok, args.steps)
    reference, method = FrozenCopyReference(model), PreferenceLossMethod("dpo", {"beta": 0.1})
    params = list(model.parameters())
    model.train()

    def run(groups) -> float:
        t = time.perf_counter()
        for group in groups:
            result = method.step(model, reference, collate([toks[i] for i in group], tok.pad_token_id))
            torch.autograd.backward(result.loss * len(group) / 4, inputs=params)
        model.zero_grad(set_to_none=False)
        return time.perf_counter() - t

    total = [0.0, 0.0]
    for rep in range(args.reps):
        for k, batch in enumerate(groups):
            whole, split = run([batch]), run([[i] for i in batch])
            if rep:  # the first pass warms the allocator and the kernels
                total[0] += whole
                total[1] += split
            print(f"rep {rep} batch {k}: whole {whole:.2f} s, one pair per forward {split:.2f} s, "
                  f"ratio {split / whole:.2f}")
    print(f"total over reps 2..{args.reps}: one pair per forward / whole batch = {total[1] / total[0]:.2f}")


if __name__ == "__main__":
    main()
