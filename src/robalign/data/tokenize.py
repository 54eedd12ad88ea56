"""Turning preference pairs into token ids: chat templates, EOS, truncation.

Rules (tested in tests/data/test_tokenize.py):
- A message-list prompt is rendered with the tokenizer's chat template and the generation prompt; the
  completion is whatever the template appends for the assistant turn (so it ends with the template's
  end-of-turn token). A string prompt is used verbatim and the completion is the string.
- EOS appears exactly once at the end of every completion: trailing whitespace after the template's
  end-of-turn token is dropped, and EOS is appended when the completion does not already end with it.
- Prompt and completion are tokenised separately and concatenated, so chosen and rejected share the
  exact same prompt ids.
- Truncation: the prompt keeps its *end* (the question nearest the answer), at most
  `max_prompt_length` tokens; each completion keeps its *start*, at most `max_length - len(prompt)`
  tokens. With `max_prompt_length = 0` the prompt is never cut and a prompt that leaves no room for a
  completion is an error (or skipped with `skip_invalid`).
"""

from __future__ import annotations

from dataclasses import dataclass

from robalign.data.pairs import PreferencePair
from robalign.errors import DataError


@dataclass
class TokenizedPair:
    """Token ids of one pair. `index` is the position in its dataset (the reference-cache key)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    id: str
    index: int
    is_flipped: bool | None = None

    def __len__(self) -> int:
        """Tokens of the longer row, the padded width this pair needs."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def render(tokenizer, prompt, completion) -> tuple[str, str]:
    """Returns (prompt_text, completion_text) for one side of a pair."""
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            completion = "".join(m["content"] for m in completion)
        return prompt, completion
    if tokenizer.chat_template is None:
        raise DataError("<data>", None, "chat-message prompts need a tokenizer with a chat template",
                        "use a chat model or give prompts as plain strings")
    turns = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + turns, tokenize=False)
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text):]
    # Templates that re-render earlier turns differently (rare): fall back to the bare content.
    return prompt_text, "".join(t["content"] for t in turns)


def _completion_ids(tokenizer, text: str) -> list[int]:
    eos = tokenizer.eos_token
    if eos and text.rstrip().endswith(eos):
        text = text.rstrip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids


def tokenize_pair(tokenizer, pair: PreferencePair, index: int, *, max_length: int,
                  max_prompt_length: int) -> TokenizedPair:
    """Tokenises and truncates one pair; raises DataError if the prompt leaves no room."""
    prompt_text, chosen_text = render(tokenizer, pair.prompt, pair.chosen)
    _, rejected_text = render(tokenizer, pair.prompt, pair.rejected)
    # A chat template already starts with its own special tokens (e.g. BOS); raw text gets them here.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=isinstance(pair.prompt, str))["input_ids"]
    chosen_ids = _completion_ids(tokenizer, chosen_text)
    rejected_ids = _completion_ids(tokenizer, rejected_text)
    if not prompt_ids:  # position 0 has no predecessor, so the first token can never be scored
        raise DataError(pair.id or "<data>", index + 1, "the prompt is empty", "give every pair a prompt")
    if max_prompt_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    if room < 1:
        raise DataError(pair.id or "<data>", index + 1,
                        f"the prompt alone has {len(prompt_ids)} tokens, max_length is {max_length}",
                        "raise data.max_length, set data.max_prompt_length to truncate prompts, "
                        "or pass --skip-invalid")
    return TokenizedPair(prompt_ids, chosen_ids[:room], rejected_ids[:room], pair.id, index, pair.is_flipped)


def tokenize_pairs(tokenizer, pairs: list[PreferencePair], *, max_length: int, max_prompt_length: int,
                   skip_invalid: bool = False) -> tuple[list[TokenizedPair], int]:
    """Tokenises a dataset; returns (tokenized pairs, number skipped because they did not fit)."""
    out, skipped = [], 0
    for index, pair in enumerate(pairs):
        try:
            out.append(tokenize_pair(tokenizer, pair, index, max_length=max_length,
                                     max_prompt_length=max_prompt_length))
        except DataError:
            if not skip_invalid:
                raise
            skipped += 1
    return out, skipped
