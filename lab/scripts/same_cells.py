"""Do two sweeps' cells hold the same numbers? For showing that a refactor changed no behaviour.

    .venv/bin/python lab/scripts/same_cells.py SWEEP_BEFORE SWEEP_AFTER

Compares, for every cell both sweeps hold, result.json and every metrics.jsonl row (timing fields dropped:
any key holding "second", "time" or "per_s") and the held-out margins file byte for byte. Prints one line
per cell and exits 1 if any cell differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def untimed(obj):
    """`obj` without its timing fields, recursively."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not any(t in k for t in ("second", "time", "per_s"))}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def cell_differences(a: Path, b: Path) -> list[str]:
    """What differs between two cells (empty: the same numbers)."""
    out = []
    ra, rb = (untimed(json.loads((c / "result.json").read_text())) for c in (a, b))
    out += [f"result.json: {k}" for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)]
    rows = [[untimed(json.loads(x)) for x in (c / "metrics.jsonl").read_text().splitlines() if x] for c in (a, b)]
    if rows[0] != rows[1]:
        out.append("metrics.jsonl")
    ma, mb = a / "heldout_margins.safetensors", b / "heldout_margins.safetensors"
    if ma.is_file() != mb.is_file() or (ma.is_file() and ma.read_bytes() != mb.read_bytes()):
        out.append("heldout_margins.safetensors")
    return out


def main(argv=None) -> int:
    before, after = (Path(p) for p in (argv if argv is not None else sys.argv[1:]))
    names = sorted({c.name for c in (before / "cells").iterdir()} & {c.name for c in (after / "cells").iterdir()})
    bad = 0
    for name in names:
        diff = cell_differences(before / "cells" / name, after / "cells" / name)
        bad += bool(diff)
        print(f"{name}: {'same numbers' if not diff else 'DIFFERS in ' + ', '.join(diff)}")
    return 1 if bad or not names else 0


if __name__ == "__main__":
    raise SystemExit(main())
