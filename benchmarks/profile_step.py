"""Where one robalign DPO step spends its time: SmolLM2-135M, 4 pairs, max_length 256, under torch.profiler.

    python benchmarks/profile_step.py                      # prints the table
    python benchmarks/profile_step.py --write-doc          # also replaces the table in docs/benchmarks.md

The step is `Trainer.step()` unchanged; only labels are added, by wrapping (on this one trainer instance)
the batch fetch, the reference provider, the method's step, the attention and MLP modules of the policy,
robalign's LM-head + log-softmax function, the backward call, gradient clipping and the optimiser. Each
label's *exclusive* time (its own time minus the labelled regions nested in it) goes to one group; the
reference forward keeps everything nested in it (its own attention, MLP and LM head).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import time

import common
import torch
from _robalign_runner import build_trainer
from torch.profiler import ProfilerActivity, profile, record_function

GROUPS = [
    ("data/collate", "data / collate"),
    ("attention", "policy backbone: attention"),
    ("mlp", "policy backbone: MLP"),
    ("policy other", "policy backbone: embeddings, norms, rotary, gather, loss"),
    ("lm_head+log_softmax", "policy LM head + log-softmax (completion tokens)"),
    ("reference forward", "reference forward (frozen copy, no grad)"),
    ("backward", "backward (policy)"),
    ("clip_grad_norm", "optimiser: grad-norm clipping"),
    ("optimizer.step", "optimiser: AdamW step"),
    ("zero_grad", "optimiser: zero_grad"),
    ("step", "other (step bookkeeping, metrics)"),
]
DOC = common.REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- profile:begin -->", "<!-- profile:end -->"


def labelled(fn, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return wrapper


def instrument(trainer):
    """Adds profiler labels to this trainer's pieces (instance attributes only; robalign's code is unchanged)."""
    import robalign.logprobs as lp

    trainer.stream.batch = labelled(trainer.stream.batch, "data/collate")
    trainer.reference.logps = labelled(trainer.reference.logps, "reference forward")
    trainer.method.step = labelled(trainer.method.step, "policy other")
    trainer.acc.backward = labelled(trainer.acc.backward, "backward")
    trainer._clip = labelled(trainer._clip, "clip_grad_norm")
    trainer.optimizer.step = labelled(trainer.optimizer.step, "optimizer.step")
    trainer.optimizer.zero_grad = labelled(trainer.optimizer.zero_grad, "zero_grad")
    body, head = lp.split_body_and_head(trainer.acc.unwrap_model(trainer.model))
    for layer in body.layers:
        layer.self_attn.forward = labelled(layer.self_attn.forward, "attention")
        layer.mlp.forward = labelled(layer.mlp.forward, "mlp")
    if hasattr(lp, "token_logps"):  # robalign's fused head + log-softmax on gathered completion positions
        lp.token_logps = labelled(lp.token_logps, "lm_head+log_softmax")
    else:
        head.forward = labelled(head.forward, "lm_head+log_softmax")


def exclusive_times(events) -> dict[str, float]:
    """ms per group: each labelled region's time minus its labelled children, inside-reference kept whole."""
    labels = {g for g, _ in GROUPS}
    ours = [e for e in events if e.name in labels]
    ids = {id(e) for e in ours}

    def labelled_parent(e):
        p = e.cpu_parent
        while p is not None and id(p) not in ids:
            p = p.cpu_parent
        return p

    child_time: dict[int, float] = {}
    for e in ours:
        p = labelled_parent(e)
        if p is not None:
            child_time[id(p)] = child_time.get(id(p), 0.0) + e.cpu_time_total
    out: dict[str, float] = {g: 0.0 for g, _ in GROUPS}
    for e in ours:
        group, p = e.name, labelled_parent(e)
        while p is not None:  # anything nested in the reference forward is reference time
            if p.name == "reference forward":
                group = "reference forward"
            p = labelled_parent(p)
        out[group] += (e.cpu_time_total - child_time.get(id(e), 0.0)) / 1000.0
    return out


def table(ms: dict[str, float], step_ms: float, unprofiled_ms: float, meta: str) -> str:
    total = sum(ms.values())
    lines = [meta, "", "| part of the step | ms | % |", "|---|---:|---:|"]
    for key, name in GROUPS:
        lines.append(f"| {name} | {ms[key]:.0f} | {100 * ms[key] / total:.1f} |")
    lines.append(f"| **total (profiled step)** | **{total:.0f}** | 100 |")
    lines += ["", f"Wall time of the profiled step {step_ms:.0f} ms; the same batch run just before without the "
              f"profiler took {unprofiled_ms:.0f} ms (on an idle machine the difference is the profiler's overhead)."]
    return "\n".join(lines)


def write_doc(text: str):
    doc = DOC.read_text() if DOC.is_file() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc += f"\n{block}\n"
    DOC.write_text(doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled steps before the profiled one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--trace", default="", help="also write a Chrome trace here")
    ap.add_argument("--write-doc", action="store_true", help=f"replace the profile table in {DOC}")
    args = ap.parse_args(argv)
    threads = args.threads or common.cores()
    common.set_threads(threads)
    from robalign.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(args.model, seed=0)
    n_steps = args.warmup + 2
    prepared = common.prepare_pairs(tokenizer, common.load_hh(), n_pairs=n_steps * args.batch_size,
                                    seed=args.seed, max_length=args.max_length, batch_size=args.batch_size)
    spec = {"model": args.model, "model_seed": 0, "lora": None, "robalign": {"method": "dpo", "reference": "copy"},
            "seed": args.seed, "batch_size": args.batch_size, "max_length": args.max_length, "lr": 1e-6,
            "max_grad_norm": 1.0, "threads": threads, "total_steps": n_steps, "prepared": prepared}
    with tempfile.TemporaryDirectory(prefix="profile-") as out_dir:
        trainer, _ = build_trainer(spec, out_dir)
        for _ in range(args.warmup):
            trainer.step()
        # The profiled step reuses the last warm-up batch: the same shapes with and without the profiler.
        trainer.position -= 1
        t0 = time.perf_counter()
        trainer.step()
        unprofiled_ms = 1000 * (time.perf_counter() - t0)
        trainer.position -= 1
        instrument(trainer)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("step"):
                t0 = time.perf_counter()
                trainer.step()
                step_ms = 1000 * (time.perf_counter() - t0)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    tokens = prepared["per_step"][args.warmup - 1]
    meta = (f"robalign `dpo` step, {args.model}, {args.batch_size} pairs ({tokens['real_tokens']} real tokens, "
            f"{tokens['completion_tokens']} completion tokens, {tokens['padded_tokens']} padded), full fine-tune, "
            f"live frozen-copy reference, AdamW, fp32, {threads} threads, torch {torch.__version__}.")
    text = table(exclusive_times(prof.events()), step_ms, unprofiled_ms, meta)
    print(text)
    print("\nTop operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    if args.write_doc:
        write_doc(text)
        print(f"wrote the table into {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
