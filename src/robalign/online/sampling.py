"""Sampling the online pairs: two responses from π_θ per prompt, each pair from its own seed, and the
prompts as text for the oracle and the record."""

from __future__ import annotations

from robalign.generation import GeneratedPair, generate_pairs
from robalign.online.settings import OnlineConfig


def sample_pairs(policy, tokenizer, prompts: list[list[int]], seeds: list[int],
                 gen: OnlineConfig) -> list[GeneratedPair]:
    """Two responses per prompt (prompt token ids), with the `online:` sampling settings."""
    return generate_pairs(policy, tokenizer, prompts, temperature=gen.temperature, top_p=gen.top_p,
                          max_new_tokens=gen.max_new_tokens, seeds=seeds)


def prompt_texts(tokenizer, prompts: list[list[int]]) -> list[str]:
    """The prompts as text. Special tokens are kept: the text is what the model saw (chat template included)."""
    return [tokenizer.decode(p, skip_special_tokens=False) for p in prompts]
