"""What a sweep cell's policy writes: greedy length, truncation and gold reward per instruction kind.

    .venv/bin/python lab/scripts/generation_lengths.py outputs/results/verifiable-gen \
        [--methods dpo,simpo,gapo] [--cells flip-0,length-0.4] [--seeds 0,1,2] [--max-new-tokens 32]

For each finished cell of a built-in-task sweep (`robalign bench robustness --data verifiable
--gen-prompts N`) it reloads the saved LoRA adapter onto the base model, decodes the cell's held-out prompts
greedily as the sweep's evaluation does, and prints per cell: mean words per response, the share cut at
`max_new_tokens`, the mean gold reward (checked against the cell's `result.json`, column "= sweep"), and the
mean gold reward per instruction kind, so a fall in gold reward can be traced to the instructions it comes
from. The reference model (adapter off) is printed first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def decode_greedy(model, tokenizer, prompts, max_new_tokens: int) -> tuple[list[str], list[int]]:
    """(completion texts, completion lengths in tokens, EOS included) of a greedy decode, as the sweep's."""
    from robalign.evaluate_generation import encode_prompts, sample_completions

    _, ids = encode_prompts(tokenizer, prompts)
    out = sample_completions(model, tokenizer, ids, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return [row[0] for row in out.texts], [len(row[0]) for row in out.ids]


def describe(prompts, texts: list[str], lengths: list[int], max_new_tokens: int) -> dict:
    """Mean words, share truncated, mean gold reward overall and per instruction kind."""
    from robalign.tasks.verifiable import score

    gold = [score(p, t) for p, t in zip(prompts, texts)]
    by_kind = defaultdict(list)
    for p, g in zip(prompts, gold):
        by_kind[p.kind].append(g)
    return {"words": statistics.fmean(len(t.split()) for t in texts),
            "cut": statistics.fmean(n >= max_new_tokens for n in lengths),
            "gold": statistics.fmean(gold), "by_kind": {k: statistics.fmean(v) for k, v in by_kind.items()}}


def measure(sweep: Path, methods: list[str], cells: list[str], seeds: list[int], *, max_new_tokens: int,
            gen_prompts: int, model_name: str) -> list[dict]:
    """One row per policy (the reference first, then each finished cell) and seed; `swept` is the cell's
    gold_reward_greedy from result.json (None for the reference, whose value is any cell's
    ref_gold_reward_greedy)."""
    from peft import PeftModel

    from robalign.experiments.cells import held_out_prompts
    from robalign.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_name)
    model.eval()
    rows = []
    for seed in seeds:
        prompts = held_out_prompts(gen_prompts, seed)
        chats = [[{"role": "user", "content": p.text}] for p in prompts]
        got = describe(prompts, *decode_greedy(model, tok, chats, max_new_tokens), max_new_tokens)
        rows.append({"policy": "reference", "cell": "-", "seed": seed, **got, "swept": None})
        for method in methods:
            for cell in cells:
                path = sweep / "cells" / f"{method}-{cell}-s{seed}"
                if not (path / "adapter").is_dir():
                    print(f"generation_lengths: skipping {path} (no saved adapter)", file=sys.stderr)
                    continue
                policy = PeftModel.from_pretrained(model, path / "adapter")
                policy.eval()
                got = describe(prompts, *decode_greedy(policy, tok, chats, max_new_tokens), max_new_tokens)
                model = policy.unload()  # the base model again, LoRA layers removed, weights untouched
                swept = json.loads((path / "result.json").read_text()).get("gold_reward_greedy")
                rows.append({"policy": method, "cell": cell, "seed": seed, **got, "swept": swept})
    return rows


def mean_over_seeds(rows: list[dict]) -> dict:
    """{(policy, cell): words, cut, gold, by_kind, seeds} averaged over the seeds' rows, in first-seen order."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["policy"], r["cell"])].append(r)
    out = {}
    for key, group in groups.items():
        kinds = {k for r in group for k in r["by_kind"]}
        out[key] = {m: statistics.fmean(r[m] for r in group) for m in ("words", "cut", "gold")}
        out[key]["by_kind"] = {k: statistics.fmean(r["by_kind"][k] for r in group if k in r["by_kind"]) for k in kinds}
        out[key]["seeds"] = len(group)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("sweep", help="a sweep's --out directory (holds cells/<method>-<kind>-<rate>-s<seed>/)")
    ap.add_argument("--methods", default="dpo,simpo,gapo")
    ap.add_argument("--cells", default="flip-0,length-0.4", help="kind-rate pairs, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="the sweep's --gen-max-new-tokens")
    ap.add_argument("--gen-prompts", type=int, default=16, help="the sweep's --gen-prompts")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    a = ap.parse_args(argv)
    sweep = Path(a.sweep)
    if not (sweep / "cells").is_dir():
        print(f"generation_lengths: {sweep / 'cells'} not found (give a sweep's --out directory)", file=sys.stderr)
        return 2
    rows = measure(sweep, a.methods.split(","), a.cells.split(","), [int(s) for s in a.seeds.split(",")],
                   max_new_tokens=a.max_new_tokens, gen_prompts=a.gen_prompts, model_name=a.model)
    kinds = sorted({k for r in rows for k in r["by_kind"]})
    print("| policy | cell | seed | words | cut | gold | = sweep | " + " | ".join(kinds) + " |")
    print("|---|---|---:|---:|---:|---:|---|" + "---:|" * len(kinds))
    for r in rows:
        swept = r["swept"]
        same = "" if swept is None else ("yes" if abs(swept - r["gold"]) < 1e-6 else f"no ({swept:.3f})")
        print(f"| {r['policy']} | {r['cell']} | {r['seed']} | {r['words']:.1f} | {r['cut']:.2f} | {r['gold']:.3f} | "
              f"{same} | " + " | ".join(f"{r['by_kind'].get(k, float('nan')):.2f}" for k in kinds) + " |")
    print("\nMeans over seeds (per kind: the mean of each seed's mean, over the seeds that have the kind):\n")
    print("| policy | cell | seeds | words | cut | gold | " + " | ".join(kinds) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(kinds))
    for (policy, cell), group in mean_over_seeds(rows).items():
        print(f"| {policy} | {cell} | {group['seeds']} | {group['words']:.1f} | {group['cut']:.2f} | "
              f"{group['gold']:.3f} | " + " | ".join(f"{group['by_kind'].get(k, float('nan')):.2f}" for k in kinds)
              + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
