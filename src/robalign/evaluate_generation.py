"""Generation-based evaluation on held-out prompts: gold reward, gold win rate, KL to the reference.

For each prompt the policy π and the reference π_ref each decode greedily and draw `n_samples` samples
(at `temperature`); a gold reward function scores every completion. Reported:

- mean gold reward of π's and π_ref's greedy and sampled completions;
- gold win rate of π over π_ref, greedy against greedy and sample k against sample k (a tie counts ½);
- KL(π‖π_ref) ≈ mean over samples y ~ π of Σ_t [log π(y_t|x, y<t) − log π_ref(y_t|x, y<t)], the log-probs
  from robalign's engine (`robalign.logprobs.sequence_logps`) over the completion tokens (EOS included).

KL samples are drawn from π itself (temperature 1, full distribution): samples at another temperature come
from a different distribution and would bias the estimate. When `temperature` is 1 the sampled
completions double as KL samples; otherwise one extra sampling pass of π is made. A sample cut at
`max_new_tokens` is scored as the prefix it is, so the estimate is the KL between the two models'
distributions over the first `max_new_tokens` tokens. An empty completion contributes 0.

Randomness: sampling is seeded per prompt from `seed` (as in `robalign.generation`), and π and π_ref get
the same seeds (common random numbers): a policy equal to its reference draws the same samples, ties
everywhere, and the sampled win rate is exactly ½, not ½ ± noise. The caller's global RNG is untouched.

Prompts are chat message lists or strings, rendered and tokenised as in `robalign.data.tokenize`
(message lists through the chat template with the generation prompt). The reward function receives the
rendered prompt text (chat template included, what the model saw, as the online methods' oracles do)
and the completion decoded without special tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from robalign.blocks import unwrap_policy
from robalign.data.collate import collate
from robalign.data.tokenize import TokenizedPair, render

# Evaluation samples follow exactly the training sampler's generation config, EOS rules and RNG handling.
from robalign.generation import (
    decode_completion,
    draw_seeds,
    sample_rows,
    stop_token_ids,
)
from robalign.logprobs import sequence_logps

RewardFn = Callable[[list[str], list[str]], torch.Tensor]


# ------------------------------------------------------------------------------------------ prompts
def encode_prompts(tokenizer, prompts: Sequence, max_prompt_length: int = 0) -> tuple[list[str], list[list[int]]]:
    """(rendered texts, token ids) of prompts given as chat message lists or strings.

    Args:
        prompts: each a list of {"role", "content"} messages or a string used verbatim.
        max_prompt_length: keep at most this many tokens from the prompt's end (0 = no cut).
    """
    texts, ids = [], []
    for prompt in prompts:
        text, _ = render(tokenizer, prompt, "")
        # A chat template already starts with its own special tokens; raw text gets them here.
        tokens = tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        if not tokens:
            raise ValueError(f"prompt {len(ids)} is empty; generation needs at least one prompt token")
        texts.append(text)
        ids.append(tokens[-max_prompt_length:] if max_prompt_length else tokens)
    return texts, ids


# --------------------------------------------------------------------------------------- sampling
@dataclass
class Completions:
    """n completions for each of N prompts: ids [N][n] (EOS kept, as in training) and texts [N][n]."""

    ids: list[list[list[int]]]
    texts: list[list[str]]


@torch.no_grad()
def sample_completions(model, tokenizer, prompts: Sequence[Sequence[int]], *, n: int, temperature: float,
                       max_new_tokens: int, top_p: float = 1.0, generator: torch.Generator | None = None,
                       batch_size: int = 8) -> Completions:
    """n completions per prompt from `model`, KV-cached and batched (`batch_size` prompts per call).

    Each chunk is one `robalign.generation.sample_rows` call (left padding, rows checked against their
    prompts, completion cut after its first stop token), as `generate_pairs` is with n = 2.

    Args:
        temperature: 0 decodes greedily (then all n completions are equal: pass n=1).
        generator: one seed per prompt is drawn from it (None: from the global RNG); a prompt's
            samples depend only on its seed (`robalign.generation.RowSampler`).
    """
    stops = stop_token_ids(tokenizer, unwrap_policy(model))
    out = Completions([], [])
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        rows = sample_rows(model, tokenizer, chunk, n=n, seeds=draw_seeds(len(chunk), temperature, generator),
                           temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        out.ids += rows
        out.texts += [[decode_completion(tokenizer, y, stops) for y in got] for got in rows]
    return out


# ---------------------------------------------------------------------------------------- log-probs
@torch.no_grad()
def completion_logps(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
                     batch_size: int = 8) -> torch.Tensor:
    """Σ_t log p(y_t | x, y<t) over each completion's tokens, [M] float64 on CPU (0 for an empty one).

    Each (prompt, completion) goes through the log-prob engine as the chosen side of a `TokenizedPair`;
    the rejected side is a one-token stub (the completion's first token) whose value is discarded, so a
    row costs one token more than the sequence itself.
    """
    out = torch.zeros(len(completions), dtype=torch.float64)
    live = [k for k, c in enumerate(completions) if len(c) > 0]
    net = unwrap_policy(model)
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(live), batch_size):
            keys = live[start:start + batch_size]
            pairs = [TokenizedPair(list(prompts[k]), list(completions[k]), list(completions[k][:1]), str(k), k)
                     for k in keys]
            batch = collate(pairs, pad_id).to(next(net.parameters()).device)
            out[keys] = sequence_logps(model, batch).chosen.double().cpu()
    finally:
        net.train(was_training)
    return out


# -------------------------------------------------------------------------------------------- scores
def win_rate(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Share of paired comparisons where `ours` has the higher reward; a tie counts ½."""
    return ((ours > theirs).double() + 0.5 * (ours == theirs).double()).mean().item()


def _rewards(reward_fn: RewardFn, prompt_texts: list[str], completions: list[list[str]]) -> torch.Tensor:
    """Rewards [N, n] of n completions per prompt."""
    n = len(completions[0])
    flat_prompts = [p for p in prompt_texts for _ in range(n)]
    flat = [t for row in completions for t in row]
    return torch.as_tensor(reward_fn(flat_prompts, flat), dtype=torch.float64).reshape(len(completions), n)


@contextlib.contextmanager
def _reference_scope(policy, reference, adapter_disabled: bool):
    """Yields the reference model: `policy` with its adapters off, or the given model."""
    if adapter_disabled:
        with unwrap_policy(policy).disable_adapter():
            yield policy
    else:
        yield reference


# ---------------------------------------------------------------------------------------- the eval
@dataclass
class _Side:
    greedy: Completions
    sampled: Completions


def _decode_side(model, tokenizer, prompt_ids, *, n_samples, max_new_tokens, temperature, top_p, seed,
                 batch_size) -> _Side:
    greedy = sample_completions(model, tokenizer, prompt_ids, n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    sampled = sample_completions(model, tokenizer, prompt_ids, n=n_samples, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, generator=torch.Generator().manual_seed(seed),
                                 batch_size=batch_size)
    return _Side(greedy, sampled)


def generation_eval(policy, reference, tokenizer, prompts: Sequence, reward_fn: RewardFn, *, n_samples: int = 1,
                    max_new_tokens: int = 64, temperature: float = 0.9, seed: int = 0, batch_size: int = 8,
                    adapter_disabled: bool = False, top_p: float = 1.0, max_prompt_length: int = 0,
                    reference_cache: dict | None = None) -> dict:
    """Gold reward, gold win rate and KL(π‖π_ref) of `policy` against `reference` on held-out prompts.

    Args:
        policy: the causal LM π (a PEFT model is fine).
        reference: the reference model π_ref, or None with `adapter_disabled`.
        tokenizer: renders, tokenises and decodes.
        prompts: N chat message lists or strings.
        reward_fn: the gold reward, (prompt texts [M], completions [M]) -> [M] (e.g. a `robalign.oracles`
            reward such as `VerifiableReward()`).
        n_samples: sampled completions per prompt and model (≥ 1).
        max_new_tokens: most tokens per completion.
        temperature: sampling temperature of the sampled completions (> 0).
        seed: seeds all sampling (π and π_ref alike).
        batch_size: prompts per `generate` call and per log-prob forward.
        adapter_disabled: the reference is `policy` under `disable_adapter()` (LoRA: the base model at no
            extra memory); `reference` must then be None.
        top_p: nucleus mass of the sampled completions.
        max_prompt_length: keep at most this many prompt tokens, from the end (0 = no cut).
        reference_cache: a dict owned by the caller that keeps the reference's completions between calls
            with the same prompts and decoding settings (e.g. one per trained policy against the same
            frozen base model). Only valid while the reference's weights do not change.

    Returns:
        Float metrics under "gen/" (see the module docstring): gen/reward_{greedy,sampled},
        gen/ref_reward_{greedy,sampled}, gen/win_rate_{greedy,sampled}, gen/kl, gen/kl_stderr,
        gen/len_{greedy,sampled} and gen/ref_len_{greedy,sampled} (completion tokens), gen/prompts,
        gen/n_samples; and "generations": one JSON-ready record per prompt with the texts, their rewards,
        the KL samples' ids and per-sample KL terms.
    """
    if adapter_disabled == (reference is not None):
        raise ValueError("give a reference model or adapter_disabled=True (exactly one)")
    if adapter_disabled and not hasattr(unwrap_policy(policy), "disable_adapter"):
        raise ValueError("adapter_disabled=True needs a PEFT policy (it has no disable_adapter())")
    if not prompts:
        raise ValueError("generation_eval needs at least one prompt")
    if n_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("n_samples, max_new_tokens and batch_size must be >= 1")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0 (greedy decoding is always reported), got {temperature}")
    texts, prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_length)
    kw = dict(n_samples=n_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
              seed=seed, batch_size=batch_size)
    pol = _decode_side(policy, tokenizer, prompt_ids, **kw)
    if temperature == 1.0 and top_p == 1.0:
        kl_samples = pol.sampled
    else:  # samples from π itself; a separate seed keeps them independent of the tempered ones
        kl_samples = sample_completions(policy, tokenizer, prompt_ids, n=n_samples, temperature=1.0,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        generator=torch.Generator().manual_seed(seed + 1))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    flat_prompts = [p for p in prompt_ids for _ in range(n_samples)]
    flat_kl = [y for row in kl_samples.ids for y in row]
    lp_policy = completion_logps(policy, flat_prompts, flat_kl, pad_id, batch_size)
    key = (tuple(map(tuple, prompt_ids)), tuple(sorted(kw.items())))
    with _reference_scope(policy, reference, adapter_disabled) as ref_model:
        ref = (reference_cache or {}).get(key) or _decode_side(ref_model, tokenizer, prompt_ids, **kw)
        if reference_cache is not None:
            reference_cache[key] = ref
        lp_ref = completion_logps(ref_model, flat_prompts, flat_kl, pad_id, batch_size)
    kl = (lp_policy - lp_ref).reshape(len(prompts), n_samples)  # Σ_t log π/π_ref per sample

    rewards = {name: _rewards(reward_fn, texts, c.texts) for name, c in
               (("pg", pol.greedy), ("ps", pol.sampled), ("rg", ref.greedy), ("rs", ref.sampled))}
    metrics = {
        "gen/prompts": float(len(prompts)),
        "gen/n_samples": float(n_samples),
        "gen/reward_greedy": rewards["pg"].mean().item(),
        "gen/reward_sampled": rewards["ps"].mean().item(),
        "gen/ref_reward_greedy": rewards["rg"].mean().item(),
        "gen/ref_reward_sampled": rewards["rs"].mean().item(),
        "gen/win_rate_greedy": win_rate(rewards["pg"], rewards["rg"]),
        "gen/win_rate_sampled": win_rate(rewards["ps"], rewards["rs"]),
        "gen/kl": kl.mean().item(),
        "gen/kl_stderr": (kl.std().item() / math.sqrt(kl.numel())) if kl.numel() > 1 else 0.0,
        "gen/len_greedy": _mean_len(pol.greedy),
        "gen/len_sampled": _mean_len(pol.sampled),
        "gen/ref_len_greedy": _mean_len(ref.greedy),
        "gen/ref_len_sampled": _mean_len(ref.sampled),
    }
    records = [{
        "prompt": texts[i],
        "policy_greedy": pol.greedy.texts[i][0],
        "reference_greedy": ref.greedy.texts[i][0],
        "reward_policy_greedy": rewards["pg"][i, 0].item(),
        "reward_reference_greedy": rewards["rg"][i, 0].item(),
        "policy_samples": pol.sampled.texts[i],
        "reference_samples": ref.sampled.texts[i],
        "reward_policy_samples": rewards["ps"][i].tolist(),
        "reward_reference_samples": rewards["rs"][i].tolist(),
        "kl_sample_ids": kl_samples.ids[i],
        "kl": kl[i].tolist(),
    } for i in range(len(prompts))]
    return {**metrics, "generations": records}


def _mean_len(c: Completions) -> float:
    lengths = [len(y) for row in c.ids for y in row]
    return sum(lengths) / len(lengths)


__all__ = ["Completions", "completion_logps", "encode_prompts", "generation_eval", "sample_completions", "win_rate"]
