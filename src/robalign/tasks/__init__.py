"""Built-in preference tasks with programmatic gold rewards (no downloads)."""

from robalign.tasks.verifiable import (
    KINDS,
    VerifiablePrompt,
    VerifiableReward,
    cache_file,
    cache_pairs,
    compliant_response,
    make_preference_pairs,
    make_prompts,
    noncompliant_response,
    parse_prompt,
    score,
)

__all__ = [
    "KINDS",
    "VerifiablePrompt",
    "VerifiableReward",
    "cache_file",
    "cache_pairs",
    "compliant_response",
    "make_preference_pairs",
    "make_prompts",
    "noncompliant_response",
    "parse_prompt",
    "score",
]
