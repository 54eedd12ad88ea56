"""Running a sweep: every cell of the grid in turn (cached cells are read), sharing one loaded base model and
its reference log-probs."""

from __future__ import annotations

import json

from robalign.experiments.cells import run_cell
from robalign.experiments.spec import SweepSpec, cell_dir, check_settings


def cached_results(spec: SweepSpec) -> tuple[list[dict], list[tuple]]:
    """The finished cells of the grid and the cells not finished yet; trains nothing."""
    check_settings(spec, write=False)
    done, missing = [], []
    for cell in spec.cells():
        path = cell_dir(spec, *cell) / "result.json"
        if path.is_file():
            done.append(json.loads(path.read_text()))
        else:
            missing.append(cell)
    return done, missing


def run_sweep(spec: SweepSpec) -> list[dict]:
    from robalign import progress
    from robalign.models import load_model_and_tokenizer
    from robalign.reference import DiskMemo, SharedReference

    check_settings(spec)
    cells = list(spec.cells())
    base = load_model_and_tokenizer(spec.model)
    results, elsewhere = [], 0
    # Held-out reference log-probs are computed once per split (the base model never changes); the methods
    # of one (kind, rate, seed) train on the same batches, so theirs are computed once, by whichever process
    # meets a batch first (the sweep directory holds one base model).
    shared = SharedReference(batches=DiskMemo(spec.out / "reference_memo"))
    for cell in progress.bar(cells, desc="robustness sweep", unit="cell"):
        result = run_cell(spec, *cell, base=base, shared_reference=shared)
        if result is None:
            elsewhere += 1
        else:
            results.append(result)
    if elsewhere:
        print(f"{elsewhere} cell(s) are being trained by another process; re-run to include them in the report")
    return results
