"""Reward functions: the gold signal behind preference oracles.

A reward function maps prompts [N] and responses [N] (strings) to float rewards [N]. Sources:
length, a small built-in sentiment lexicon, a sequence-classification reward model, and the
verifiable-instructions checker of `robalign.tasks.verifiable`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from robalign.errors import ConfigError
from robalign.tasks.verifiable import VerifiableReward

RewardFn = Callable[[list[str], list[str]], Tensor]
"""(prompts [N], responses [N]) -> rewards, float tensor [N]."""


def _check_batch(prompts: list[str], responses: list[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class LengthReward:
    """Reward = scale × length of the response, in whitespace-separated words or in characters.

    Args:
        unit: "words" or "chars".
        scale: multiplier; under a Bradley–Terry oracle it sets how fast preferences saturate
            (P = σ(scale·(len1 − len2)/τ)).
    """

    def __init__(self, unit: str = "words", scale: float = 1.0):
        if unit not in ("words", "chars"):
            raise ConfigError(f"LengthReward unit must be 'words' or 'chars', got {unit!r}")
        self.unit, self.scale = unit, float(scale)

    def length(self, text: str) -> int:
        return len(text.split()) if self.unit == "words" else len(text)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        _check_batch(prompts, responses)
        return torch.tensor([self.scale * self.length(r) for r in responses], dtype=torch.float32)


POSITIVE_WORDS = frozenset(
    "good great excellent wonderful amazing fantastic lovely delightful happy joy joyful pleasant "
    "beautiful brilliant superb love loved loving like enjoy enjoyed enjoyable nice kind helpful "
    "perfect best better awesome charming calm cheerful glad grateful thankful impressive "
    "inspiring fun favorite fresh bright hopeful positive success successful win warm gentle "
    "friendly clear useful elegant".split()
)
NEGATIVE_WORDS = frozenset(
    "bad terrible awful horrible poor sad unhappy angry hate hated dislike boring dull ugly "
    "worst worse disappointing disappointed annoying annoyed painful pain fail failed failure "
    "broken wrong useless nasty gloomy miserable upset afraid fear scary dirty rude cruel "
    "harmful weak problem problems mess messy tired lonely hopeless negative loss confusing "
    "bitter cold".split()
)
# A negator flips the polarity of the next word: "not good" should not read as positive.
_NEGATORS = frozenset("not no never hardly without isn't wasn't don't doesn't didn't".split())


class LexiconSentimentReward:
    """Programmatic sentiment: (positive − negative word count) / sqrt(words + 1).

    The square root keeps long answers from winning by volume alone while still rewarding
    several positive words over one. A word right after a negator ("not", "never", ...) counts
    with the opposite polarity.

    Args:
        positive: positive lexicon (default `POSITIVE_WORDS`).
        negative: negative lexicon (default `NEGATIVE_WORDS`).
    """

    def __init__(self, positive: Iterable[str] | None = None, negative: Iterable[str] | None = None):
        self.positive = frozenset(POSITIVE_WORDS if positive is None else positive)
        self.negative = frozenset(NEGATIVE_WORDS if negative is None else negative)

    def score_text(self, text: str) -> float:
        words = re.findall(r"[a-z']+", text.lower())
        total, previous = 0, ""
        for word in words:
            polarity = (word in self.positive) - (word in self.negative)
            total += -polarity if previous in _NEGATORS else polarity
            previous = word
        return total / math.sqrt(len(words) + 1)

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        _check_batch(prompts, responses)
        return torch.tensor([self.score_text(r) for r in responses], dtype=torch.float32)


def _join(prompt: str, response: str) -> str:
    return f"{prompt}\n{response}"


def _positive_index(config) -> int:
    """The 'only' class of a one-logit model, else a label named positive, else the last class."""
    if config.num_labels == 1:
        return 0
    for index, name in (config.id2label or {}).items():
        if str(name).lower().startswith("pos"):
            return int(index)
    return config.num_labels - 1


class SequenceClassifierReward:
    """Reward = the logit of the positive (or only) class of a sequence-classification model.

    The model (e.g. `AutoModelForSequenceClassification`) is put in eval mode and run without
    gradients, in batches. Sequences are right-padded by hand: with right padding the real tokens
    keep positions 0..L−1, so a padded row scores exactly like the same text alone (left padding
    would shift absolute positions in models that do not derive them from the mask). The model
    pools its last non-pad token, for which `config.pad_token_id` must be set; it is taken from
    the tokenizer (pad, else eos) when missing.

    Args:
        model: a transformers sequence-classification model.
        tokenizer: its tokenizer.
        batch_size: texts per forward pass.
        label_index: which logit is the reward; default: 0 for one-logit models, else a label
            whose name starts with "pos", else the last class.
        max_length: truncate each text to this many tokens (None: no truncation).
        format_fn: (prompt, response) -> text fed to the model; default "prompt\\nresponse". Pass
            one that applies the reward model's chat template where it was trained with one.
    """

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 8,
        label_index: int | None = None,
        max_length: int | None = None,
        format_fn: Callable[[str, str], str] = _join,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.label_index = _positive_index(model.config) if label_index is None else label_index
        self.max_length, self.format_fn = max_length, format_fn
        if model.config.pad_token_id is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None and batch_size > 1:
                raise ConfigError("the reward model's tokenizer has no pad or eos token; use batch_size=1")
            model.config.pad_token_id = pad

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Right-padded input_ids [B, L] and attention_mask [B, L]."""
        ids = [
            self.tokenizer(t, truncation=self.max_length is not None, max_length=self.max_length)["input_ids"]
            for t in texts
        ]
        width = max(len(x) for x in ids)
        pad = self.model.config.pad_token_id or 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        return input_ids, mask

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        _check_batch(prompts, responses)
        texts = [self.format_fn(p, r) for p, r in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(texts), self.batch_size):
            input_ids, mask = self._encode(texts[start : start + self.batch_size])
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            out.append(logits[:, self.label_index].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


# Name -> factory, for `build_oracle` specs such as "bt:sentiment".
REWARDS: dict[str, Callable[[], RewardFn]] = {
    "verifiable": VerifiableReward,
    "length": LengthReward,
    "sentiment": LexiconSentimentReward,
}
