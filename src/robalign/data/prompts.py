"""Training data for online methods: preference rows, prompt-only rows, or a mix of both.

Online methods (SAIL's PP / PR routes, oracle-robust online alignment) only need prompts: they sample
the responses themselves. A prompt-only row has a `prompt` (a string or a chat message list) and no
`chosen` / `rejected`; it becomes a `PreferencePair` with empty completions, marked
`extra["prompt_only"] = True`, so it flows through the ordinary pipeline (tokenisation, batching,
checkpointed data position). After tokenisation both of its completions are the single EOS token;
`is_prompt_only_ids` recognises such rows in a batch. Rows that do carry `chosen` / `rejected` are read
exactly as `robalign.data.load_pairs` reads them (SAIL's DPO / DP routes need them).
"""

from __future__ import annotations

from typing import Any

from robalign.data.io import (
    FileLevelError,
    LoadResult,
    open_source,
    parse_messages,
    raise_no_pairs,
    row_to_pair,
    skip_or_raise,
)
from robalign.data.pairs import PreferencePair
from robalign.errors import DataError

PROMPT_ONLY = "prompt_only"
_FIX = "give each row a non-empty 'prompt' (a string or a list of chat messages)"


def is_prompt_only(pair: PreferencePair) -> bool:
    return bool(pair.extra.get(PROMPT_ONLY))


def is_prompt_only_ids(chosen_ids: list[int], rejected_ids: list[int]) -> bool:
    """A tokenised prompt-only row: both completions are the same single token (the EOS)."""
    return len(chosen_ids) <= 1 and chosen_ids == rejected_ids


def prompt_row_to_pair(row: Any, *, path: str, line: int | None, default_id: str) -> PreferencePair:
    """A row with `chosen` and `rejected` -> its pair; a row with only `prompt` -> a prompt-only pair.

    Raises:
        DataError: naming the file and line, when the row is neither.
    """
    if isinstance(row, dict) and (row.get("chosen") is not None or row.get("rejected") is not None):
        return row_to_pair(row, path=path, line=line, default_id=default_id)
    if not isinstance(row, dict) or row.get("prompt") is None:
        raise DataError(path, line, "row has no 'prompt' (and no 'chosen'/'rejected' pair)", _FIX)
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(path, line, "'prompt' is empty or whitespace-only", _FIX)
    elif isinstance(prompt, list):
        if not prompt:
            raise DataError(path, line, "'prompt' is an empty message list", _FIX)
        prompt = parse_messages(prompt, "prompt", path, line)
    else:
        raise DataError(path, line, f"'prompt' is {type(prompt).__name__}; it must be a string or a "
                        "list of messages", _FIX)
    pid = row.get("id")
    pid = default_id if pid is None else str(pid)
    return PreferencePair(prompt, "", "", id=pid, extra={PROMPT_ONLY: True})


def load_online_data(source, *, skip_invalid: bool = False, split: str = "train") -> LoadResult:
    """Reads preference and/or prompt-only rows (any source `load_pairs` reads).

    Args:
        source: a file path, ``"hf:NAME[:CONFIG]"``, a `datasets` dataset or an iterable of dict rows.
        skip_invalid: skip and count bad rows instead of raising on the first one.
        split: split of ``hf:`` sources and `DatasetDict`s.

    Raises:
        DataError: a bad row (unless `skip_invalid`), an unreadable source, or no usable rows.
    """
    label, rows = open_source(source, split)
    result = LoadResult(pairs=[], skipped=0, source=label)
    base = str(label).rsplit("/", 1)[-1].removeprefix("hf:") or str(label)
    try:
        for line, row in rows:
            try:
                if isinstance(row, DataError):
                    raise row
                result.pairs.append(prompt_row_to_pair(row, path=label, line=line, default_id=f"{base}:{line}"))
            except DataError as err:
                skip_or_raise(result, err, skip_invalid)
    except FileLevelError as err:
        if not (skip_invalid and result.pairs):
            raise err.error from None
        skip_or_raise(result, err.error, skip_invalid, note="; the rest of the file was skipped")
    finally:
        getattr(rows, "close", lambda: None)()
    if not result.pairs:
        raise_no_pairs(result)
    return result
