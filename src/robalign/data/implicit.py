"""Implicit prompts: recover (prompt, chosen, rejected) from two full transcripts.

Datasets such as Anthropic HH-RLHF store only `chosen` and `rejected`, each a whole conversation;
the prompt is the part both share. Two shapes are handled:

* **Strings.** If the shared prefix contains the HH turn marker ``"\\n\\nAssistant:"``, the prompt
  ends right after the *last* such marker in it, so it always ends with ``"...\\n\\nAssistant:"`` and
  each completion keeps its leading space exactly as stored (``" Sure, ..."``). Keeping it means
  ``prompt + completion`` reproduces the transcript byte for byte, and the space stays attached to the
  first word as BPE tokenizers expect. Otherwise the longest common prefix is used, backed off to the
  start of a word so no completion starts mid-word, and then past trailing spaces/tabs so the
  completions (not the prompt) carry the space before their first word, as in the HH case.
* **Message lists.** The common leading messages are the prompt; what follows must be assistant
  turns (tool messages may follow an assistant turn).

Both raise `DataError` when no prompt is shared or a completion would be empty. Inputs are assumed
to be type-checked already (strings, or lists of ``{"role", "content"}`` dicts); `robalign.data.io`
does that before calling here.
"""

from __future__ import annotations

from robalign.data.pairs import Messages
from robalign.errors import DataError

ASSISTANT_MARKER = "\n\nAssistant:"
_FIX_SHARED = (
    "implicit-prompt rows need chosen and rejected to start with the same prompt; "
    "add a 'prompt' column or pass --skip-invalid to skip such rows"
)
_COMPLETION_ROLES = ("assistant", "tool")


def common_prefix_length(a: str | list, b: str | list) -> int:
    """Length of the longest common prefix of two strings (or two lists), in items."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _mid_word(prefix: str, text: str, n: int) -> bool:
    """True when cutting `text` at `n` would split a word (prefix[:n] == text[:n])."""
    return n > 0 and n < len(text) and _is_word_char(prefix[n - 1]) and _is_word_char(text[n])


def _generic_cut(chosen: str, rejected: str, n: int) -> int:
    """Back the common-prefix length `n` off to a word start, then past trailing spaces/tabs."""
    while n > 0 and (_mid_word(chosen, chosen, n) or _mid_word(chosen, rejected, n)):
        n -= 1
    # A BPE tokenizer glues a space to the word after it; leaving it on the prompt would make the
    # completion's first token one the model rarely saw.
    while n > 0 and chosen[n - 1] in " \t":
        n -= 1
    return n


def prompt_cut(chosen: str, rejected: str, marker: str = ASSISTANT_MARKER) -> int:
    """Where the shared prompt of two transcripts ends (0 if they share none).

    Args:
        chosen: full chosen transcript.
        rejected: full rejected transcript.
        marker: turn marker; the prompt ends after its last occurrence in the shared prefix.
            Pass "" to always use the generic word-boundary rule.

    Returns:
        The prompt length in characters; ``chosen[:cut] == rejected[:cut]``.
    """
    n = common_prefix_length(chosen, rejected)
    if marker:
        at = chosen.rfind(marker, 0, n)
        if at >= 0:
            return at + len(marker)
    return _generic_cut(chosen, rejected, n)


def _check_completion(text: str, name: str, path: str, line: int | None) -> None:
    if not text:
        raise DataError(
            path, line, f"{name} is contained in the shared prompt, so its completion is empty", _FIX_SHARED
        )
    if not text.strip():
        raise DataError(
            path,
            line,
            f"{name}'s completion after the shared prompt is only whitespace",
            "drop the row or pass --skip-invalid to skip such rows",
        )


def split_implicit_text(
    chosen: str,
    rejected: str,
    *,
    marker: str = ASSISTANT_MARKER,
    path: str = "<pair>",
    line: int | None = None,
) -> tuple[str, str, str]:
    """Split two string transcripts into (prompt, chosen completion, rejected completion).

    Args:
        chosen: full chosen transcript, e.g. ``"\\n\\nHuman: hi\\n\\nAssistant: Hello!"``.
        rejected: full rejected transcript.
        marker: assistant-turn marker (see `prompt_cut`).
        path: file name for error messages.
        line: line or row number for error messages.

    Returns:
        ``(prompt, chosen_completion, rejected_completion)`` with ``prompt + completion`` equal to
        each input.

    Raises:
        DataError: no shared prompt, or an empty or whitespace-only completion.
    """
    cut = prompt_cut(chosen, rejected, marker)
    if cut == 0:
        raise DataError(path, line, "chosen and rejected share no prompt (no common prefix)", _FIX_SHARED)
    prompt, chosen_rest, rejected_rest = chosen[:cut], chosen[cut:], rejected[cut:]
    _check_completion(chosen_rest, "chosen", path, line)
    _check_completion(rejected_rest, "rejected", path, line)
    return prompt, chosen_rest, rejected_rest


def _check_message_completion(messages: Messages, name: str, path: str, line: int | None) -> None:
    if not messages:
        raise DataError(
            path,
            line,
            f"{name} is contained in the shared prompt messages, so its completion is empty",
            _FIX_SHARED,
        )
    roles = [m["role"] for m in messages]
    if roles[0] != "assistant" or any(r not in _COMPLETION_ROLES for r in roles):
        raise DataError(
            path,
            line,
            f"after the shared prompt, {name} continues with roles {roles}; "
            "a completion must be assistant turn(s)",
            "make chosen and rejected differ only in their final assistant turn(s), "
            "or give an explicit 'prompt'",
        )
    if not "".join(m["content"] for m in messages).strip():
        raise DataError(
            path,
            line,
            f"{name}'s completion is empty or whitespace-only",
            "drop the row or pass --skip-invalid to skip such rows",
        )


def split_implicit_messages(
    chosen: Messages,
    rejected: Messages,
    *,
    path: str = "<pair>",
    line: int | None = None,
) -> tuple[Messages, Messages, Messages]:
    """Split two conversations into (prompt messages, chosen turns, rejected turns).

    Args:
        chosen: full chosen conversation, a list of ``{"role", "content"}`` dicts.
        rejected: full rejected conversation.
        path: file name for error messages.
        line: line or row number for error messages.

    Returns:
        The common leading messages, then each side's remaining (assistant) messages.

    Raises:
        DataError: no shared leading message, an empty remainder, or a remainder that does not
            start with an assistant turn.
    """
    k = common_prefix_length(chosen, rejected)
    if k == 0:
        raise DataError(
            path, line, "chosen and rejected share no leading message to use as the prompt", _FIX_SHARED
        )
    prompt, chosen_rest, rejected_rest = chosen[:k], chosen[k:], rejected[k:]
    _check_message_completion(chosen_rest, "chosen", path, line)
    _check_message_completion(rejected_rest, "rejected", path, line)
    return prompt, chosen_rest, rejected_rest
