"""lab/scripts/length_baseline.py: a "longer reply wins" ranker on the sweep's held-out split, counted by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

from length_baseline import longer_wins_accuracy  # noqa: E402

from robalign.data import PreferencePair  # noqa: E402


def test_longer_wins_accuracy_counts_ties_half():
    pairs = [PreferencePair("p", "long answer", "short"),  # chosen longer: right
             PreferencePair("p", "no", "a longer one"),  # chosen shorter: wrong
             PreferencePair("p", "same", "size"),  # tie: half
             PreferencePair("p", [{"role": "assistant", "content": "abcdef"}], [{"role": "assistant", "content": "ab"}])]
    assert longer_wins_accuracy(pairs) == (1 + 0 + 0.5 + 1) / 4


def test_script_splits_like_bench_and_counts_candidates(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "x" * (5 if i % 4 else 50), "rejected": "y" * 20} for i in range(40)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(REPO / "lab" / "scripts" / "length_baseline.py"), str(data), "--seeds", "3",
                           "--train-pairs", "20", "--eval-pairs", "8", "--rates", "0.25,0.5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seed, held, acc, train, shorter, relabelled = (c.strip() for c in proc.stdout.splitlines()[-1].strip("|").split("|"))
    from robalign.data import load_pairs, train_eval_split

    tr, ev = train_eval_split(load_pairs(data).pairs, 0.2, 3)  # bench's split of seed 3, computed here
    tr, ev = tr[:20], ev[:8]
    assert (seed, held, train) == ("3", str(len(ev)), str(len(tr)))
    assert float(acc) == round(sum(len(p.chosen) == 50 for p in ev) / len(ev), 3)
    n_short = sum(len(p.chosen) == 5 for p in tr)
    assert shorter == str(n_short) and relabelled == f"{min(5, n_short)} / {min(10, n_short)}"
