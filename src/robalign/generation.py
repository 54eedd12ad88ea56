"""Sampling two responses per prompt from the current policy (SAIL, oracle-robust online alignment).

One batched `generate` call with the KV cache: prompts are left-padded (so every row's next token sits
at the same position), each prompt is repeated twice (`repeat_interleave`), and the output rows
are checked against their prompts before they are split into pairs, so a sample can never be paired
with another example's prompt (the official SAIL code paired generations with shuffled prompts).

Randomness: every prompt has its own seed, and its two samples are drawn by Gumbel-max from a CPU
generator seeded with it (`RowSampler`, a logits processor on top of greedy decoding): the argmax of
logits / T restricted to the top-p nucleus, plus Gumbel noise, is an exact sample of the
same distribution HF's multinomial sampling draws from. A prompt's samples therefore depend only on its
seed and its own logits, never on which other prompts share the batch, so N processes that each
generate a slice of a global batch draw what one process generating the whole batch draws (the
multi-process equivalence of the online methods rests on this). The global torch RNG is never touched.

Completions follow the rules of `robalign.data.tokenize`: a completion ends with exactly one EOS (the
first stop token the model emitted; tokens after it are generate's padding and are dropped), and a
sample that reached `max_new_tokens` without a stop token has no EOS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from robalign.blocks import unwrap_policy


class GeneratedPair(NamedTuple):
    """Two samples for one prompt. Ids are plain lists; texts are decoded without special tokens."""

    prompt_ids: list[int]
    y1_ids: list[int]
    y2_ids: list[int]
    y1_text: str
    y2_text: str


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, P] input ids and attention mask of prompts padded on the left to the longest one."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; generation needs at least one prompt token")
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def cut_at_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The completion up to and including its first stop token; everything after it is padding."""
    for k, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:k + 1]
    return tokens  # reached max_new_tokens: no EOS, and pad-id tokens here are real samples


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """The tokenizer's EOS plus any EOS ids of the model's generation config."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if extra is not None:
        ids.update(int(i) for i in (extra if isinstance(extra, (list, tuple)) else [extra]))
    if not ids:
        raise ValueError("the tokenizer has no EOS token: generation could never stop before max_new_tokens")
    return ids


def greedy_config(*, max_new_tokens: int, pad_id: int, stop_ids: set[int]):
    """Greedy decoding with the KV cache; sampling is `RowSampler`'s, on top of it.

    Every knob that could reshape the scores is pinned: unset ones would be filled from the model's own
    generation_config (e.g. a checkpoint's repetition penalty), and the samples would no longer come from
    π_θ at the stated temperature.
    """
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, num_return_sequences=1,
                            num_beams=1, use_cache=True, pad_token_id=pad_id, eos_token_id=sorted(stop_ids),
                            repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)


class RowSampler:
    """A logits processor that makes greedy decoding sample each prompt's rows from the prompt's own seed.

    Rows 2i and 2i+1 (prompt i's two samples) take their Gumbel noise from generator i, which draws a
    [2, V] block per decoding step whatever the batch holds. Temperature and top-p are applied by
    transformers' own warpers first, so the distribution is the one `do_sample=True` would use.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, rows_per_seed: int = 2):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.rows_per_seed = rows_per_seed
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        u = torch.cat([torch.rand((self.rows_per_seed, scores.shape[-1]), generator=g)
                       for g in self.generators]).to(scores.device)
        # Gumbel-max; the log-softmax normaliser is one constant per row, so the argmax needs no softmax.
        pick = (scores - torch.log(-torch.log(u))).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, -math.inf).scatter_(1, pick, 0.0)


def draw_seeds(n: int, temperature: float, generator: torch.Generator | None) -> list[int]:
    """n per-prompt seeds from `generator` (None: the global RNG); greedy decoding needs and draws none."""
    if temperature <= 0:
        return [0] * n
    return torch.randint(2**62, (n,), generator=generator).tolist()


@torch.no_grad()
def sample_rows(model, tokenizer, prompts: Sequence[Sequence[int]], *, n: int, seeds: Sequence[int],
                temperature: float, top_p: float, max_new_tokens: int) -> list[list[list[int]]]:
    """n completions per prompt (ids, cut after the first stop token) from one batched, KV-cached
    `generate` call; prompt i's rows are n·i … n·i + n − 1 and are sampled from `seeds[i]`.

    The model is put in eval mode for the call, then back in the mode it was in.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    net = unwrap_policy(model)
    device = next(net.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, net)
    ids, mask = left_pad(prompts, pad_id)
    # Greedy decoding over RowSampler's one-hot scores is per-seed sampling; temperature 0 is plain greedy.
    config = greedy_config(max_new_tokens=max_new_tokens, pad_id=pad_id, stop_ids=stops)
    processors = [RowSampler(seeds, temperature, top_p, rows_per_seed=n)] if temperature > 0 else []
    was_training = net.training
    net.eval()
    try:
        # Each prompt n times in a row (what num_return_sequences=n does, but valid for greedy decoding too).
        out = net.generate(input_ids=ids.repeat_interleave(n, dim=0).to(device),
                           attention_mask=mask.repeat_interleave(n, dim=0).to(device), generation_config=config,
                           logits_processor=processors)
    finally:
        net.train(was_training)
    return split_rows(out, ids, n, stops)


def split_rows(sequences: torch.Tensor, padded: torch.Tensor, n: int, stop_ids: set[int]) -> list[list[list[int]]]:
    """Splits generate's [n·N, P + new] output into N lists of n completions, checking every row's prompt.

    Args:
        sequences: [n·N, P + new]; rows n·i … n·i + n − 1 are the samples of prompt i.
        padded: [N, P] the left-padded prompts that were passed to generate.
        n: rows per prompt.
        stop_ids: the tokens that end a completion.

    Raises:
        ValueError: a row does not start with its own prompt, i.e. the rows were reordered and pairing
            them would silently train on samples of other prompts.
    """
    count, width = padded.shape
    expected = padded.repeat_interleave(n, dim=0).to(sequences.device)
    if sequences.shape[0] != n * count or not torch.equal(sequences[:, :width], expected):
        raise ValueError("generate returned rows that do not match their prompts (pairing would be scrambled)")
    new = sequences[:, width:].cpu().tolist()
    return [[cut_at_stop(new[n * i + k], stop_ids) for k in range(n)] for i in range(count)]


def generate_pairs(model, tokenizer, prompts: Sequence[Sequence[int]], *, temperature: float = 0.9,
                   top_p: float = 1.0, max_new_tokens: int = 64, generator: torch.Generator | None = None,
                   seeds: Sequence[int] | None = None) -> list[GeneratedPair]:
    """Two samples per prompt from `model`, in one batched, KV-cached `generate` call (`sample_rows`).

    Args:
        model: a causal LM (a PEFT or DDP wrapper is fine).
        tokenizer: gives the pad and EOS ids and decodes the texts.
        prompts: N prompt id lists (e.g. the prompt rows of a `PreferenceBatch`).
        temperature: sampling temperature; 0 decodes greedily (both samples are then equal).
        top_p: nucleus mass, 1.0 keeps the full distribution.
        max_new_tokens: most tokens per sample.
        generator: draws the N per-prompt seeds when `seeds` is None; None draws them from the global RNG.
        seeds: one seed per prompt (see the module docstring).

    Returns:
        N `GeneratedPair`s, the i-th for `prompts[i]`.
    """
    if not prompts:
        return []
    seeds = draw_seeds(len(prompts), temperature, generator) if seeds is None else seeds
    rows = sample_rows(model, tokenizer, prompts, n=2, seeds=seeds, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens)
    stops = stop_token_ids(tokenizer, unwrap_policy(model))
    return [GeneratedPair(list(prompt), y1, y2, decode_completion(tokenizer, y1, stops),
                          decode_completion(tokenizer, y2, stops)) for prompt, (y1, y2) in zip(prompts, rows)]


def decode_completion(tokenizer, ids: list[int], stop_ids: set[int]) -> str:
    """The completion's text without its stop token and special tokens."""
    body = ids[:-1] if ids and ids[-1] in stop_ids else ids
    return tokenizer.decode(body, skip_special_tokens=True)
