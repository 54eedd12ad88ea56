"""The record of every generated pair, `generations.jsonl` in the run directory: one JSON object per pair
(step, id, route, prompt, y1, y2, y1_preferred, observed_prob, gold_prob, lengths), numbered by optimiser
step. Under data parallelism process k > 0 writes its own pairs to `generations-rank{k}.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

from robalign import jsonl
from robalign.generation import GeneratedPair

GENERATIONS = "generations.jsonl"


def generations_path(out_dir: Path | None, rank: int) -> Path | None:
    """This process's record in `out_dir`, or None when nothing is written (no output directory)."""
    if out_dir is None:
        return None
    return out_dir / (GENERATIONS if rank == 0 else f"generations-rank{rank}.jsonl")


def restart(path: Path | None, step: int, resumed: bool) -> None:
    """Starts the record at optimiser step `step`: empty for a fresh run; for a resumed one, cut back to the
    pairs of steps ≤ `step` (those after the checkpoint are generated again, identically)."""
    if path is not None:
        jsonl.open_log(path, resume_step=step if resumed else None).close()


def append(path: Path | None, records: list[dict]) -> None:
    """Appends `records` (one line each) to the record; nothing without a path or records. The file is
    opened per micro-step, so the record is whole on disk after every one."""
    if path is None or not records:
        return
    with open(path, "a") as fh:
        jsonl.append(fh, records)


def record(pair_id: str, pair: GeneratedPair, prompt_text: str, route: str, y1_preferred: bool,
           observed_prob: float, gold_prob: float | None) -> dict:
    """One line of generations.jsonl, without its step."""
    return {"id": pair_id, "route": route, "prompt": prompt_text, "y1": pair.y1_text, "y2": pair.y2_text,
            "y1_preferred": bool(y1_preferred), "observed_prob": float(observed_prob),
            "gold_prob": None if gold_prob is None else float(gold_prob),
            "len_y1": len(pair.y1_ids), "len_y2": len(pair.y2_ids)}
