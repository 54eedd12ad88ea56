"""The long-training regime side by side: a multi-epoch DPO run on the cached frozen trunk against today's
LoRA path and full fine-tuning, on HH-RLHF harmless (the shared copy), in one invocation.

Each configuration runs in its own process (so peak RSS is its own) and writes a JSON line:
  cached   train_last_k=k, full weights of the last k blocks, model.trunk_cache=disk (a fresh folder), the
           whole --epochs budget: cache build time and size, pair-passes/s over the run, peak RSS, the
           per-epoch held-out curve; then the time of a cached step split into the top blocks, the LM head
           (+ log-softmax) and the optimiser, each against its FLOP floor.
  lora     LoRA r=16 on every block (today's default path): --steps timed steps after one warm-up.
  full     full fine-tuning of every weight with a frozen reference copy: --steps timed steps.
Pair-passes/s of the short runs are measured on the same data, batch size and length as the cached run.

    .venv/bin/python benchmarks/long_training.py --out benchmarks/results/long_training.jsonl
    .venv/bin/python benchmarks/long_training.py --pairs 64 --epochs 1 --steps 2 --model tiny-llama  # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_PATH, machine, matmul_ceiling, memory_mib  # noqa: E402


def _pairs(args):
    from robalign.experiments.cells import split_file

    train, held = split_file(args.data, args.seed, train_pairs=args.pairs, eval_pairs=args.eval_pairs)
    return train, held


def _config(args, out: Path, kind: str):
    from robalign.config import build_config

    model = {"name": args.model, "lora_r": 16 if kind == "lora" else 0}
    train = {"output_dir": str(out), "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "progress": kind == "cached", "save_final": False, "eval_at_start": kind == "cached",
             "warmup_steps": 10}
    if kind == "cached":
        model.update(train_last_k=args.k, trunk_cache="disk", trunk_cache_dir=str(out / "trunk"))
        train.update(epochs=args.epochs)
    else:
        train.update(max_steps=args.steps + 1, eval_per_epoch=0)
    return build_config({"model": model, "method": {"name": "dpo"}, "data": {"max_length": args.max_length},
                         "train": train})


def real_tokens(batch) -> int:
    """Tokens of the pairs laid out as prompt + chosen + rejected (the packed layout without padding)."""
    b = batch.num_pairs
    prompts = batch.attention_mask[:b].sum() - batch.completion_mask[:b].sum()
    return int(batch.attention_mask.sum() - prompts)


def _floor(batch, dims) -> dict:
    """FLOPs of a cached-trunk step that any exact implementation must do: the top blocks over the pairs' real
    tokens (forward, input and weight gradients: 3x the forward) and the LM head over completion tokens
    (forward and input gradient; the head is frozen). Padding positions the packed rows also run are not
    counted (`padded_share` says how many there were)."""
    completion = len(batch.packed.targets)
    return {"blocks": 3 * 2 * dims["block_params"] * dims["k"] * real_tokens(batch),
            "head": 2 * 2 * dims["head_params"] * completion}


def _breakdown(trainer, dims, n: int) -> dict:
    """Times the pieces of n cached-trunk steps: top blocks (forward + backward), LM head and log-softmax
    (forward + backward), optimiser. The same computation as `Trainer.step`, cut at the final hidden states."""
    from robalign.blocks import only_blocks
    from robalign.logprobs import (
        gather_completion_states,
        reduce_to_sequences,
        split_body_and_head,
        token_logps,
    )
    from robalign.losses import preference_loss

    model = trainer.model
    body, head = split_body_and_head(model)
    opt = trainer.optimizer
    spent = {"blocks": 0.0, "head": 0.0, "optimizer": 0.0}
    floor = {"blocks": 0.0, "head": 0.0}
    real = positions = 0
    for k in range(n):
        batch = trainer.stream.batch(trainer.position + k)
        t0 = time.perf_counter()
        pack, trunk = batch.packed, batch.trunk
        with only_blocks(body, trunk.start):
            top = body(inputs_embeds=trunk.hidden, attention_mask=pack.attention, position_ids=pack.position_ids,
                       use_cache=False).last_hidden_state
        t1 = time.perf_counter()
        cut = top.detach().requires_grad_(True)
        hidden, targets, rows = gather_completion_states(cut, batch)
        lp = reduce_to_sequences(token_logps(head, hidden, targets), rows, batch)
        ref = trainer.reference.logps(batch)
        out = preference_loss("dpo", chosen_logps=lp.chosen, rejected_logps=lp.rejected,
                              ref_chosen_logps=ref.chosen, ref_rejected_logps=ref.rejected, beta=0.1)
        t2 = time.perf_counter()
        out.loss.backward()
        t3 = time.perf_counter()
        top.backward(cut.grad)
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        spent["blocks"] += (t1 - t0) + (t4 - t3)
        spent["head"] += (t2 - t1) + (t3 - t2)
        spent["optimizer"] += t5 - t4
        for key, value in _floor(batch, dims).items():
            floor[key] += value
        real += real_tokens(batch)
        positions += pack.input_ids.numel()
    return {"seconds": spent, "gflop": {k: v / 1e9 for k, v in floor.items()},
            "gflops": {k: floor[k] / spent[k] / 1e9 for k in floor}, "steps": n, "padded_share": 1 - real / positions}


def _dims(model, k: int) -> dict:
    from robalign.blocks import decoder_layers
    from robalign.logprobs import split_body_and_head

    body, head = split_body_and_head(model)
    block = decoder_layers(body)[-1]
    return {"block_params": sum(p.numel() for p in block.parameters()), "head_params": head.weight.numel(), "k": k}


def shape_rates(args) -> dict:
    """GFLOP/s of the cached step's own matmul shapes, each timed alone (best of 5): what the step's matmuls can
    reach on this CPU at those shapes, as opposed to the square 2048 x 2048 ceiling. Shapes of an average batch
    (packed positions P, completion tokens C) of SmolLM2-135M: hidden 576, MLP 1536, vocabulary 49,152."""
    from transformers import AutoTokenizer

    from robalign.data.collate import BatchStream
    from robalign.data.tokenize import tokenize_pairs
    from robalign.models import cache_dir, load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    folder = cache_dir() / args.model
    tok = AutoTokenizer.from_pretrained(folder) if folder.is_dir() else load_model_and_tokenizer(args.model)[1]
    train, _ = _pairs(args)
    pairs, _ = tokenize_pairs(tok, train, max_length=args.max_length, max_prompt_length=args.max_length // 2)
    stream = BatchStream(pairs, args.batch_size, seed=args.seed, pad_id=tok.pad_token_id)
    batches = [stream.batch(k) for k in range(stream.micro_batches_per_epoch)]  # one epoch
    p = sum(b.packed.input_ids.numel() for b in batches) // len(batches)
    c = sum(len(b.packed.targets) for b in batches) // len(batches)
    padded = 1 - sum(real_tokens(b) for b in batches) / sum(b.packed.input_ids.numel() for b in batches)
    h, inner, vocab = 576, 1536, 49152
    shapes = {"head forward [C,H]x[H,V]": (c, h, vocab), "head input grad [C,V]x[V,H]": (c, vocab, h),
              "block MLP forward [P,H]x[H,I]": (p, h, inner), "block MLP down [P,I]x[I,H]": (p, inner, h),
              "block attention proj [P,H]x[H,H]": (p, h, h), "block weight grad [H,P]x[P,I]": (h, p, inner)}
    out = {"P": p, "C": c, "padded_share": padded}
    for name, (m, k, n_) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n_)
        torch.mm(a, b)
        best = min(_timed(torch.mm, a, b) for _ in range(5))
        out[name] = 2 * m * k * n_ / best / 1e9
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def run_one(args) -> dict:
    from robalign.trainer import Trainer

    if args.kind == "shapes":
        return {"kind": "shapes", **shape_rates(args), "pair_passes_per_s": 0.0,
                "peak_rss_mib": memory_mib().get("VmHWM")}
    torch.set_num_threads(args.threads)
    train, held = _pairs(args)
    out = Path(args.workdir) / args.kind
    t0 = time.perf_counter()
    trainer = Trainer(_config(args, out, args.kind), train_pairs=train, eval_pairs=held)
    setup_s = time.perf_counter() - t0
    result = {"kind": args.kind, "setup_s": setup_s, "train_pairs": len(trainer.train_data),
              "eval_pairs": len(trainer.eval_data), "batch_size": args.batch_size, "max_length": args.max_length}
    if args.kind == "cached":
        result["cache_build_s"] = getattr(trainer, "trunk_build_s", 0.0)
        result["cache_mib"] = trainer.trunk.num_bytes / 2**20
        result["cache_disk_mib"] = sum(p.stat().st_size for p in (out / "trunk").rglob("*.safetensors")) / 2**20
        t1 = time.perf_counter()
        summary = trainer.train()
        result["train_s"] = time.perf_counter() - t1
        result["steps"] = summary["steps"]
        result["pair_passes"] = summary["steps"] * args.batch_size
        result["pair_passes_per_s"] = result["pair_passes"] / result["train_s"]
        result["total_s"] = setup_s + result["train_s"]
        result["curve"] = [{k: r.get(k) for k in ("epoch", "eval/accuracy_h", "eval/margin_h")}
                           for r in summary["curve"]]
        result["breakdown"] = _breakdown(trainer, _dims(trainer.model, args.k), args.breakdown_steps)
    else:
        trainer.step()  # warm-up: allocator, thread pool
        times = []
        for _ in range(args.steps):
            t1 = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - t1)
        result["step_s"] = times
        result["pair_passes_per_s"] = args.batch_size * len(times) / sum(times)
    result["peak_rss_mib"] = memory_mib().get("VmHWM")
    return result


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA_PATH))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=1850, help="training pairs (the rest of the 80 %% split is unused)")
    p.add_argument("--eval-pairs", type=int, default=462)
    p.add_argument("--epochs", type=float, default=5.0)
    p.add_argument("--k", type=int, default=2, help="trained blocks of the cached run")
    p.add_argument("--steps", type=int, default=6, help="timed steps of the lora and full runs")
    p.add_argument("--breakdown-steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default="cached,lora,full")
    p.add_argument("--out", default="benchmarks/results/long_training.jsonl")
    p.add_argument("--kind", help=argparse.SUPPRESS)  # a child process runs one kind
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.kind:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"command": " ".join(sys.argv), "machine": machine(), "ceiling": matmul_ceiling(args.threads),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = [header]
    with tempfile.TemporaryDirectory() as work:
        for kind in args.kinds.split(","):
            child = [sys.executable, __file__, *sys.argv[1:], "--kind", kind, "--workdir", work]
            proc = subprocess.run(child, stdout=subprocess.PIPE, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"{kind}: the child failed (exit {proc.returncode})")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(json.dumps(rows[-1])[:400], flush=True)
    header["ceiling_end"] = matmul_ceiling(args.threads)  # the machine's speed drifts: the higher one counts
    with open(out, "a") as fh:
        fh.write(json.dumps({"run": rows}) + "\n")
    report(rows)


def report(rows):
    header, runs = rows[0], {r["kind"]: r for r in rows[1:]}
    measured = [header["ceiling"]["gflops"], header["ceiling_end"]["gflops"]]
    ceiling = max(measured)
    print(f"\nmatmul ceiling {ceiling:.0f} GFLOP/s ({header['ceiling']['threads']} threads; the higher of "
          + " and ".join(f"{g:.0f}" for g in measured) + " measured before and after)")
    for kind, r in runs.items():
        if kind == "shapes":
            print(f"one epoch's batches: {r['padded_share']:.0%} of packed positions are padding")
            print(f"matmul GFLOP/s at the cached step's shapes (P = {r['P']} packed positions, C = {r['C']} "
                  "completion tokens): " + ", ".join(f"{k} {v:.0f}" for k, v in r.items() if "[" in k))
            continue
        print(f"{kind:7s} {r['pair_passes_per_s']:.2f} pair-passes/s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    if "cached" in runs:
        c = runs["cached"]
        print(f"cached: cache build {c['cache_build_s']:.0f} s, {c['cache_mib']:.0f} MiB; {c['pair_passes']} "
              f"pair-passes in {c['train_s']:.0f} s; total {c['total_s'] / 60:.1f} min")
        for base in ("lora", "full"):
            if base in runs:
                print(f"  {c['pair_passes_per_s'] / runs[base]['pair_passes_per_s']:.1f}x {base}")
        b = c["breakdown"]
        total = sum(b["seconds"].values())
        useful = sum(b["gflop"].values())
        print(f"  step pieces over {b['steps']} steps: " + ", ".join(
            f"{k} {v / total:.0%}" + (f" ({b['gflops'][k]:.0f} GFLOP/s)" if k in b["gflops"] else "")
            for k, v in b["seconds"].items()))
        print(f"  whole step at {useful / total:.0f} GFLOP/s = {useful / total / ceiling:.0%} of the ceiling "
              f"(useful FLOPs; {b.get('padded_share', 0):.0%} of the packed positions are padding)")


if __name__ == "__main__":
    main()
