"""Reading preference data into `PreferencePair` lists, with row-level validation.

Sources: ``.jsonl`` / ``.jsonl.gz`` (streamed line by line), ``.json`` / ``.json.gz`` (a list of rows
or ``{"data": [...]}``), ``.parquet`` (streamed in record batches), an in-memory `datasets.Dataset`
(or `DatasetDict`, indexed by `split`, or any iterable of dict rows), and ``"hf:NAME[:CONFIG]"`` for
`datasets.load_dataset`.

Row formats:

* explicit: ``prompt``, ``chosen``, ``rejected`` all strings, or all message lists. With message
  lists, ``chosen``/``rejected`` hold the assistant turn(s) after the prompt, or full conversations
  that start with the prompt messages (the shared prompt is then stripped);
* implicit: only ``chosen``/``rejected`` (full transcripts); the prompt is their shared prefix
  (`robalign.data.implicit`).

Optional columns ``id`` (string or integer; default ``"{file basename}:{line}"``), ``is_flipped``,
``chosen_score``, ``rejected_score`` are carried through; other columns are kept in
`PreferencePair.extra` when their value is a JSON scalar and dropped otherwise.

Every problem is a `DataError` naming the file and the 1-based line (JSONL) or row number (other
formats). With ``skip_invalid=True`` bad rows are skipped and counted instead.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from robalign import atomic
from robalign.data.implicit import split_implicit_messages, split_implicit_text
from robalign.data.pairs import Messages, PreferencePair, Text
from robalign.errors import ConfigError, DataError

MAX_LINE_BYTES = 10 * 1024 * 1024
ROLES = ("system", "user", "assistant", "tool")
KNOWN_COLUMNS = ("prompt", "chosen", "rejected", "id", "is_flipped", "chosen_score", "rejected_score")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")

_SKIP = "pass --skip-invalid to skip such rows"
_ROW_FIX = (
    "each row needs string fields 'chosen' and 'rejected' (or chat message lists), and optionally 'prompt'"
)
_MAX_REASONS = 5

# What a row iterator yields: (line or row number, the row or the row-level error found reading it).
Rows = Iterator[tuple[int, Any]]


@dataclass
class LoadResult:
    """What `load_pairs` read.

    Attributes:
        pairs: the valid pairs, in file order.
        skipped: rows skipped because they were invalid (only with ``skip_invalid=True``).
        source: the file path, ``hf:`` spec or dataset name the pairs came from.
        skip_reasons: the first few skip messages, each naming file and line.
    """

    pairs: list[PreferencePair]
    skipped: int
    source: str
    skip_reasons: list[str] = field(default_factory=list)

    def skip_summary(self, first: int = 3) -> str:
        """'' when nothing was skipped, else the count and the first few reasons (each naming file and line)."""
        if not self.skipped:
            return ""
        shown = self.skip_reasons[:first]
        which = "the first below" if len(shown) == 1 else f"the first {len(shown)} below"
        head = f"{self.source}: skipped {self.skipped} invalid rows (--skip-invalid; {which})"
        return "\n  ".join([head, *shown])


class FileLevelError(Exception):
    """A problem that ends reading the whole source (e.g. a truncated gzip stream)."""

    def __init__(self, error: DataError):
        super().__init__(str(error))
        self.error = error


def load_pairs(
    source: Any,
    *,
    skip_invalid: bool = False,
    split: str = "train",
    limit: int | None = None,
) -> LoadResult:
    """Read preference pairs from a file, a `datasets` dataset or ``"hf:NAME[:CONFIG]"``.

    Args:
        source: a path (str or PathLike) ending in one of `SUFFIXES`; ``"hf:NAME[:CONFIG]"``; a
            `datasets.Dataset` / `DatasetDict`; or any iterable of dict rows.
        skip_invalid: skip and count bad rows instead of raising on the first one.
        split: split to load for ``hf:`` sources and `DatasetDict`s.
        limit: stop after this many valid pairs (None: read everything).

    Returns:
        A `LoadResult` with at least one pair.

    Raises:
        DataError: a bad row (unless `skip_invalid`), an unreadable file, or no valid pairs at all.
        ConfigError: `limit` below 1.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1 (got {limit})")
    label, rows = open_source(source, split)
    result = LoadResult(pairs=[], skipped=0, source=label)
    try:
        _read_rows(rows, result, label, skip_invalid, limit)
    except FileLevelError as err:
        if not (skip_invalid and result.pairs):
            raise err.error from None
        skip_or_raise(result, err.error, skip_invalid, note="; the rest of the file was skipped")
    finally:
        getattr(rows, "close", lambda: None)()  # release the file when `limit` stopped early
    if not result.pairs:
        raise_no_pairs(result)
    return result


def _read_rows(rows: Rows, result: LoadResult, label: str, skip_invalid: bool, limit: int | None) -> None:
    id_base = os.path.basename(label.removeprefix("hf:")) or label
    for line, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            pair = row_to_pair(row, path=label, line=line, default_id=f"{id_base}:{line}")
        except DataError as err:
            skip_or_raise(result, err, skip_invalid)
            continue
        result.pairs.append(pair)
        if limit is not None and len(result.pairs) >= limit:
            return


def skip_or_raise(result: LoadResult, err: DataError, skip_invalid: bool, note: str = "") -> None:
    if not skip_invalid:
        raise err
    result.skipped += 1
    if len(result.skip_reasons) < _MAX_REASONS:
        result.skip_reasons.append(str(err) + note)


def raise_no_pairs(result: LoadResult) -> None:
    if result.skipped:
        problem = (
            f"no valid preference pairs: all {result.skipped} rows were invalid, "
            f"e.g. {result.skip_reasons[0]}"
        )
        raise DataError(
            result.source, None, problem, "fix the rows, or check that the file has the expected columns"
        )
    raise DataError(
        result.source, None, "no preference pairs found (the source is empty)", "check the path or split"
    )


# ---------------------------------------------------------------------------------------------
# Sources


def open_source(source: Any, split: str) -> tuple[str, Rows]:
    """Resolve `source` to (label for messages, iterator over (line, row))."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, str) and path.startswith("hf:"):
            return path, _hub_rows(path, split)
        if os.path.isdir(path):
            return str(path), _saved_dataset_rows(str(path), split)
        return str(path), _file_rows(str(path))
    if isinstance(source, dict):  # a DatasetDict is a dict of splits
        if split not in source:
            raise DataError(
                "dataset",
                None,
                f"split '{split}' not found (splits: {sorted(source)})",
                "pass an existing split",
            )
        source = source[split]
    if not isinstance(source, Iterable):
        raise DataError(
            repr(source)[:80],
            None,
            "not a path, 'hf:NAME' spec, or dataset",
            "pass a file path or a datasets.Dataset",
        )
    info = getattr(source, "info", None)
    label = getattr(info, "dataset_name", None) or "dataset"
    return label, ((i + 1, row) for i, row in enumerate(source))


def _file_rows(path: str) -> Rows:
    lower = path.lower()
    if not lower.endswith(SUFFIXES):
        raise DataError(path, None, "unsupported file type", f"use one of {', '.join(SUFFIXES)}")
    if not os.path.isfile(path):
        raise DataError(path, None, "file not found", "check the path")
    if lower.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path)
    if lower.endswith((".json", ".json.gz")):
        return _json_rows(path)
    return _parquet_rows(path)


def _saved_dataset_rows(path: str, split: str) -> Rows:
    """Rows of a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DataError(path, None, "a folder, but not one written by datasets' save_to_disk",
                        f"give a file ({', '.join(SUFFIXES)}) or a save_to_disk folder")
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:  # datasets raises many unrelated types for a damaged folder
        raise DataError(path, None, f"could not read the saved dataset: {exc}", "write it again with save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(path, None, f"split '{split}' not found (splits: {sorted(ds)})", "pass an existing split")
        ds = ds[split]
    return ((i + 1, row) for i, row in enumerate(ds))


def _hub_rows(spec: str, split: str) -> Rows:
    """Rows of ``hf:NAME[:CONFIG]`` via `datasets.load_dataset` (never with remote code)."""
    name, _, config = spec[len("hf:") :].partition(":")
    import datasets  # imported here: it is slow to import and only this path needs it

    from robalign import hub

    offline = hub.prepare(f"dataset {name!r}")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # datasets raises many unrelated types for "cannot load"
        if offline:
            raise DataError(spec, None, f"could not load the dataset: {offline}", "") from None
        raise DataError(
            spec,
            None,
            f"could not load the dataset: {exc}",
            "check the name, config and split, and that the hub or cache is reachable",
        ) from exc
    return ((i + 1, row) for i, row in enumerate(ds))


def _gzip_error(path: str, line: int, exc: BaseException) -> FileLevelError:
    where = f"after line {line}" if line else "at the start"
    problem = f"gzip stream is truncated or corrupt {where} ({exc})"
    fix = "re-download or re-compress the file"
    if line:
        fix += f"; pass --skip-invalid to keep the rows before line {line + 1}"
    return FileLevelError(DataError(path, line or None, problem, fix))


def _jsonl_rows(path: str) -> Rows:
    """Stream a (possibly gzipped) JSONL file in binary, one bounded line at a time."""
    # Binary mode: text mode would also split on U+2028 and friends, and could not name the
    # line holding invalid UTF-8.
    opener = gzip.open if path.lower().endswith(".gz") else open
    with _open_binary(path, opener) as fh:
        yield from _jsonl_lines(fh, path)


def _open_binary(path: str, opener: Any) -> Any:
    try:
        return opener(path, "rb")
    except OSError as exc:  # e.g. permission denied: still the user's to fix, not a traceback
        raise DataError(
            path, None, f"cannot open the file ({exc.strerror or exc})", "check its permissions"
        ) from exc


def _jsonl_lines(fh: Any, path: str) -> Rows:
    line = 0
    while True:
        try:
            raw = fh.readline(MAX_LINE_BYTES + 2)  # + 2: room for "\r\n" after a maximal line
        except (EOFError, OSError, zlib.error) as exc:
            raise _gzip_error(path, line, exc) from exc
        if not raw:
            return
        line += 1
        if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            if not raw.endswith(b"\n"):
                _discard_line(fh, path, line)
            yield (
                line,
                DataError(
                    path,
                    line,
                    f"line is longer than {MAX_LINE_BYTES // 2**20} MB; not parsed",
                    f"split or shorten the row; {_SKIP}",
                ),
            )
            continue
        if line == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        if raw.strip():  # blank lines (e.g. a trailing newline) are not rows
            yield line, _parse_json_line(raw, path, line)


def _discard_line(fh: Any, path: str, line: int) -> None:
    """Consume the rest of an over-long line without holding it in memory."""
    while True:
        try:
            chunk = fh.readline(2**20)
        except (EOFError, OSError, zlib.error) as exc:
            raise _gzip_error(path, line - 1, exc) from exc
        if not chunk or chunk.endswith(b"\n"):
            return


def _parse_json_line(raw: bytes, path: str, line: int) -> Any:
    """The decoded JSON value of one line, or the `DataError` describing why it has none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DataError(
            path,
            line,
            f"invalid UTF-8 at byte {exc.start} of the line",
            f"re-encode the file as UTF-8; {_SKIP}",
        )
    try:
        # Without the line break, the error column points into this line, not at "line 2 column 1".
        return json.loads(text.rstrip())
    except json.JSONDecodeError as exc:
        return DataError(
            path,
            line,
            f"invalid JSON at column {exc.colno}: {exc.msg}",
            f"each line must be one JSON object; {_SKIP}",
        )
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit integer, or [[[[... nested
        return DataError(path, line, f"invalid JSON: {exc}", _SKIP)


def _read_bytes(path: str) -> bytes:
    if not path.lower().endswith(".gz"):
        with _open_binary(path, open) as fh:
            return fh.read()
    try:
        with _open_binary(path, gzip.open) as fh:
            return fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            path, None, f"gzip stream is truncated or corrupt ({exc})", "re-download or re-compress the file"
        ) from exc


def _json_rows(path: str) -> Rows:
    """Rows of a whole-document JSON file: a list of rows, or ``{"data": [...]}``."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text_line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            path, None, f"invalid UTF-8 on text line {text_line}", "re-encode the file as UTF-8"
        ) from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Extra data"):  # JSON Lines saved with a .json name: read it as such
            return _jsonl_lines(io.BytesIO(data), path)
        raise DataError(
            path,
            None,
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            "fix the JSON syntax",
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(path, None, f"invalid JSON: {exc}", "fix the JSON syntax") from exc
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(
            path,
            None,
            f"the top-level JSON value is {_json_type(doc)}",
            'a .json file must hold a list of rows or {"data": [...]}; use .jsonl for one row per line',
        )
    return ((i + 1, row) for i, row in enumerate(doc))


def _parquet_rows(path: str) -> Rows:
    """Stream a Parquet file in record batches; row numbers are 1-based."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, None, f"not a readable Parquet file ({exc})", "re-export the file") from exc
    return _parquet_batches(reader, path)


def _parquet_batches(reader: Any, path: str) -> Rows:
    import pyarrow as pa

    n = 0
    batches = reader.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise FileLevelError(
                DataError(
                    path, n or None, f"Parquet data is corrupt after row {n} ({exc})", "re-export the file"
                )
            ) from exc
        if batch is None:
            return
        for row in batch.to_pylist():
            n += 1
            yield n, row


# ---------------------------------------------------------------------------------------------
# Rows


def row_to_pair(
    row: Any, *, path: str = "<row>", line: int | None = None, default_id: str = ""
) -> PreferencePair:
    """Validate one row and turn it into a `PreferencePair`.

    Args:
        row: the decoded row (a dict with ``chosen``, ``rejected`` and optionally ``prompt``, ``id``,
            ``is_flipped``, ``chosen_score``, ``rejected_score`` and scalar extras).
        path: file or dataset name for error messages.
        line: 1-based line or row number for error messages.
        default_id: the id to use when the row has none.

    Raises:
        DataError: the row is malformed (the message says how to fix it).
    """
    if not isinstance(row, dict):
        raise DataError(path, line, f"row is {_json_type(row)}, not an object", _ROW_FIX)
    missing = [k for k in ("chosen", "rejected") if row.get(k) is None]
    if missing:
        raise DataError(path, line, f"missing field {' and '.join(repr(k) for k in missing)}", _ROW_FIX)
    # Checked before and after the prompt is split off: an implicit pair of equal transcripts
    # would otherwise be reported as "contained in the shared prompt".
    if row["chosen"] == row["rejected"]:
        raise DataError(path, line, "chosen and rejected are identical", f"drop the row or fix it; {_SKIP}")
    prompt, chosen, rejected = _prompt_and_completions(row, path, line)
    if chosen == rejected:
        raise DataError(path, line, "chosen and rejected are identical", f"drop the row or fix it; {_SKIP}")
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        id=_row_id(row.get("id"), default_id, path, line),
        is_flipped=_flag(row.get("is_flipped"), path, line),
        chosen_score=_score(row, "chosen_score", path, line),
        rejected_score=_score(row, "rejected_score", path, line),
        extra=_extras(row),
    )


def _prompt_and_completions(row: dict, path: str, line: int | None) -> tuple[Text, Text, Text]:
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    kind = _kind(chosen, "chosen", path, line)
    if _kind(rejected, "rejected", path, line) != kind:
        raise DataError(
            path,
            line,
            "'chosen' and 'rejected' have different types (one string, one message list)",
            _ROW_FIX,
        )
    if prompt is not None and _kind(prompt, "prompt", path, line) != kind:
        raise DataError(
            path,
            line,
            f"'prompt' is {_json_type(prompt)} but 'chosen' is {_json_type(chosen)}",
            "use strings for all three fields, or message lists for all three",
        )
    if kind == "text":
        for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if value is not None:
                _check_unicode(value, f"'{name}'", path, line)
        if prompt is None:
            return split_implicit_text(chosen, rejected, path=path, line=line)
        _check_text_completion(chosen, "chosen", path, line)
        _check_text_completion(rejected, "rejected", path, line)
        return prompt, chosen, rejected
    chosen, rejected = parse_messages(chosen, "chosen", path, line), parse_messages(rejected, "rejected", path, line)
    if prompt is None:
        return split_implicit_messages(chosen, rejected, path=path, line=line)
    prompt = parse_messages(prompt, "prompt", path, line)
    chosen, rejected = _strip_prompt(prompt, chosen), _strip_prompt(prompt, rejected)
    _check_message_completion(chosen, "chosen", path, line)
    _check_message_completion(rejected, "rejected", path, line)
    return prompt, chosen, rejected


def _kind(value: Any, name: str, path: str, line: int | None) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "messages"
    raise DataError(
        path, line, f"'{name}' is {_json_type(value)}; it must be a string or a list of messages", _ROW_FIX
    )


def _check_unicode(text: str, what: str, path: str, line: int | None) -> None:
    # JSON escapes can smuggle in lone surrogates ("\ud800"), which no tokenizer can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            path,
            line,
            f"{what} contains an unpaired surrogate {text[exc.start]!r} (invalid Unicode)",
            f"fix the text encoding; {_SKIP}",
        ) from exc


def _check_text_completion(text: str, name: str, path: str, line: int | None) -> None:
    if not text.strip():
        raise DataError(
            path,
            line,
            f"'{name}' is empty or whitespace-only",
            f"every row needs non-empty completions; {_SKIP}",
        )


def parse_messages(value: list, name: str, path: str, line: int | None) -> Messages:
    """Validate a message list; keep role, content and other string-valued keys (e.g. name)."""
    out = []
    for i, msg in enumerate(value, start=1):
        where = f"'{name}' message {i}"
        if not isinstance(msg, dict):
            raise DataError(
                path,
                line,
                f"{where} is {_json_type(msg)}, not a {{role, content}} object",
                'message lists must hold objects like {"role": "user", "content": "..."}',
            )
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise DataError(path, line, f"{where} has role {role!r}", f"allowed roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(
                path,
                line,
                f"{where} has content that is {_json_type(content)}",
                "message content must be a string",
            )
        _check_unicode(content, where, path, line)
        out.append({k: v for k, v in msg.items() if isinstance(v, str)})
    return out


def _strip_prompt(prompt: Messages, conversation: Messages) -> Messages:
    """Drop the prompt messages from a full conversation; leave bare completions unchanged."""
    if prompt and conversation[: len(prompt)] == prompt:
        return conversation[len(prompt) :]
    return conversation


def _check_message_completion(messages: Messages, name: str, path: str, line: int | None) -> None:
    if not messages:
        raise DataError(
            path,
            line,
            f"'{name}' has no messages after the prompt",
            f"every row needs a non-empty completion; {_SKIP}",
        )
    roles = [m["role"] for m in messages]
    if roles[0] != "assistant" or any(r not in ("assistant", "tool") for r in roles):
        raise DataError(
            path,
            line,
            f"'{name}' has roles {roles}: not assistant turn(s), "
            "and not a conversation starting with the prompt messages",
            "give only the assistant turn(s), or the full conversation starting with the prompt",
        )
    _check_text_completion("".join(m["content"] for m in messages), name, path, line)


def _row_id(value: Any, default: str, path: str, line: int | None) -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(path, line, f"'id' is {_json_type(value)}", "'id' must be a string or an integer")


def _flag(value: Any, path: str, line: int | None) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise DataError(path, line, f"'is_flipped' is {_json_type(value)}", "'is_flipped' must be true or false")


def _score(row: dict, key: str, path: str, line: int | None) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise DataError(path, line, f"'{key}' is {value!r:.40}", f"'{key}' must be a finite number")


def _extras(row: dict) -> dict:
    """Unknown columns whose value is a JSON scalar (nested values are dropped)."""
    extra = {}
    for key, value in row.items():
        if key in KNOWN_COLUMNS or not isinstance(key, str):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue  # not representable in JSON, so write_pairs could not round-trip it
        if value is None or isinstance(value, (str, int, float, bool)):
            extra[key] = value
    return extra


def _json_type(value: Any) -> str:
    """The JSON type of a value with its article, for messages: "an object", "a list", "null"."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), f"a {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Writing


def write_pairs(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> int:
    """Write pairs as JSONL (gzipped if `path` ends in ``.gz``), atomically.

    The file is written next to `path` under a temporary name and renamed into place, so a crash
    never leaves a half-written dataset behind. `load_pairs` reads it back to equal pairs (except
    that an empty ``id`` comes back as the default ``"{basename}:{line}"``).

    Args:
        pairs: the pairs to write, via `PreferencePair.to_row`.
        path: destination file; parent directories are created.

    Returns:
        The number of rows written.
    """
    path = os.fspath(path)
    n = 0
    with atomic.open_file(path, "wb") as raw:
        # filename="": the header names no file (else it would carry the temporary file's name).
        out = gzip.GzipFile(filename="", fileobj=raw, mode="wb") if path.lower().endswith(".gz") else raw
        for pair in pairs:
            out.write(json.dumps(pair.to_row(), ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
        if out is not raw:
            out.close()
    return n
