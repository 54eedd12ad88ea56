"""Verifiable-instruction pairs whose responses are sampled from a model (the default one in our runs).

For each prompt of `make_prompts(n, seed)` the model writes k responses (temperature 1, each prompt from
its own seed); the gold checker grades them. The pair is the best-graded sample against the worst-graded
one. When all k samples grade the same (a 135M model often fails an instruction every time, or meets an
easy one every time), one side is written by the task's own writer so the pair still contrasts a
compliant with a non-compliant answer: a template compliant answer against the best sample when no sample
complies, the best sample against a template failure when all comply (empty samples are dropped first).
`extra` says which side is sampled (`chosen_source` / `rejected_source`: "model" or "template"); scores
are the gold grades.

Sampling is the expensive part (n·k generations), so `cache_sampled_pairs` writes the set once as JSONL,
named by model, n, seed, k, max_new_tokens and the task version, and re-reads it afterwards.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import torch

from robalign import jsonl
from robalign.data.pairs import PreferencePair
from robalign.tasks.verifiable import (
    TASK_VERSION,
    compliant_response,
    make_prompts,
    noncompliant_response,
    read_jsonl,
    score,
)


def sampled_preference_pairs(model, tokenizer, n: int, seed: int, *, k: int = 4, max_new_tokens: int = 48,
                             batch_size: int = 8) -> list[PreferencePair]:
    """n pairs of model-sampled responses to `make_prompts(n, seed)`, chosen = the higher gold grade."""
    from robalign.evaluate_generation import encode_prompts, sample_completions

    if k < 2:
        raise ValueError(f"k must be >= 2 samples per prompt, got {k}")
    prompts = make_prompts(n, seed)
    messages = [[{"role": "user", "content": p.text}] for p in prompts]
    _, ids = encode_prompts(tokenizer, messages)
    samples = sample_completions(model, tokenizer, ids, n=k, temperature=1.0, max_new_tokens=max_new_tokens,
                                 generator=torch.Generator().manual_seed(seed), batch_size=batch_size)
    pairs = []
    for prompt, message, texts in zip(prompts, messages, samples.texts):
        rng = random.Random(f"{prompt.id}-sampled-{seed}")
        texts = [t for t in texts if t.strip()]  # an empty reply is not a response (the loader refuses it)
        if not texts:
            texts = [noncompliant_response(prompt, rng)]
        graded = sorted(((score(prompt, t), t) for t in texts), key=lambda st: -st[0])  # stable: sample order
        (best, chosen), (worst, rejected) = graded[0], graded[-1]
        sources = ["model", "model"]
        if best == worst:
            if best < 1.0:  # no sample complies: a written compliant answer against the best sample
                chosen, rejected, sources = compliant_response(prompt, rng), chosen, ["template", "model"]
            else:  # every sample complies: the best sample against a written failure
                rejected, sources = noncompliant_response(prompt, rng), ["model", "template"]
            best, worst = score(prompt, chosen), score(prompt, rejected)
        pairs.append(PreferencePair(prompt=message, chosen=chosen, rejected=rejected, id=prompt.id,
                                    is_flipped=False, chosen_score=best, rejected_score=worst,
                                    extra={"kind": prompt.kind, "chosen_source": sources[0],
                                           "rejected_source": sources[1]}))
    return pairs


def sampled_cache_file(directory: str | os.PathLike, model_name: str, n: int, seed: int, k: int,
                       max_new_tokens: int) -> Path:
    """Where `cache_sampled_pairs` keeps one sampled set."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_name)).strip("_")[-80:] or "model"
    return Path(directory) / f"verifiable-sampled-v{TASK_VERSION}-{tag}-n{n}-seed{seed}-k{k}-t{max_new_tokens}.jsonl"


def cache_sampled_pairs(directory: str | os.PathLike, model_name: str, model, tokenizer, n: int, seed: int, *,
                        k: int = 4, max_new_tokens: int = 48) -> list[PreferencePair]:
    """`sampled_preference_pairs`, written once (temporary file + rename) and re-read on later calls."""
    path = sampled_cache_file(directory, model_name, n, seed, k, max_new_tokens)
    if path.exists():
        return read_jsonl(path)
    pairs = sampled_preference_pairs(model, tokenizer, n, seed, k=k, max_new_tokens=max_new_tokens)
    jsonl.write_rows(path, (p.to_row() for p in pairs), encoding="utf-8")
    return pairs


__all__ = ["cache_sampled_pairs", "sampled_cache_file", "sampled_preference_pairs"]
