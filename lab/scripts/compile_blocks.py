"""Forward + backward of SmolLM2's last 2 blocks (+ final norm), eager against `torch.compile`, and a profile.

    .venv/bin/python lab/scripts/compile_blocks.py eager|compile|profile

Random states [8 rows × L positions] (L = 200, 160, 240), a causal boolean mask, a squared-output loss, 2
threads; prints the seconds per step of each L (compile: also the compile time and the largest difference
from eager). `profile` prints torch.profiler's table of 3 eager steps. The lab log (benchmarks-log.md,
2026-12-07) quotes one run.
"""

from __future__ import annotations

import sys
import time

import torch


def main(mode: str) -> None:
    from robalign.blocks import only_blocks
    from robalign.logprobs import split_body_and_head
    from robalign.models import load_model_and_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, _ = load_model_and_tokenizer("smollm2-135m-instruct")
    model.eval().requires_grad_(False)
    body, _ = split_body_and_head(model)
    body.layers[28:].requires_grad_(True)
    body.norm.requires_grad_(True)

    def make(length):
        pos = torch.arange(length)[None].expand(8, length)
        mask = torch.tril(torch.ones(length, length, dtype=torch.bool))[None, None].expand(8, 1, length, length)
        return torch.randn(8, length, 576) * 0.5, pos, mask

    def eager(h, pos, mask):
        with only_blocks(body, 28):
            return body(inputs_embeds=h, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state

    def core(h, pos, mask):
        cos_sin = body.rotary_emb(h, pos)
        for layer in body.layers[28:]:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
            h = h[0] if isinstance(h, tuple) else h
        return body.norm(h)

    def step(fn, *x):
        fn(*x).pow(2).mean().backward()

    fn = eager
    if mode == "compile":
        t0 = time.perf_counter()
        fn = torch.compile(core, dynamic=True)
        step(fn, *make(200))
        print("compile + first step", round(time.perf_counter() - t0, 1), "s")
        x = make(200)
        print("largest |compiled − eager|", (eager(*x) - fn(*x)).abs().max().item())
    if mode == "profile":
        from torch.profiler import ProfilerActivity, profile

        x = make(200)
        step(eager, *x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step(eager, *x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    for length in (200, 160, 240):
        x = make(length)
        step(fn, *x)
        t0 = time.perf_counter()
        for _ in range(5):
            step(fn, *x)
        print(mode, length, round((time.perf_counter() - t0) / 5, 3), "s/step")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eager")
