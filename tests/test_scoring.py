"""`robalign score`: pairs ranked by GAPO anchor weight at a model; the most stable share kept."""

import json
import math

import torch

from conftest import make_pairs
from robalign.cli import main
from robalign.data import load_pairs, write_pairs


def _run(tmp_path, *extra):
    data, out = tmp_path / "pairs.jsonl", tmp_path / "scores.jsonl"
    if not data.exists():
        write_pairs(make_pairs(6), data)
    argv = ["score", "--model", "tiny-llama", "--data", str(data), "--out", str(out), "--max-length", "40",
            "--radius", "0.5", *extra]
    return main(argv), out


def test_score_ranks_by_weight_and_keeps_the_most_stable(tmp_path, capsys, tiny):
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.methods.gapo import GapoMethod, GapoParams

    kept_path = tmp_path / "kept.jsonl"
    rc, out = _run(tmp_path, "--batch-size", "8", "--keep-fraction", "0.5", "--keep-out", str(kept_path))
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = make_pairs(6)
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in pairs)
    weights = [r["weight"] for r in rows]
    assert weights == sorted(weights, reverse=True)
    for r in rows:
        assert math.isclose(r["weight"], 1 / (1 + math.exp(-(0.5 - 2.0 * r["gap"]))), rel_tol=1e-5)
    flags = {p.id: p.is_flipped for p in pairs}
    assert all(r["is_flipped"] == flags[r["id"]] for r in rows)
    # one batch holds all six pairs, so the gaps are those of one anchor on the whole data
    model, tok = tiny
    data, _ = tokenize_pairs(tok, pairs, max_length=40, max_prompt_length=20)
    gap = GapoMethod(GapoParams(radius=0.5)).anchor(model, collate(data, tok.pad_token_id)).gap
    by_id = {r["id"]: r["gap"] for r in rows}
    assert torch.allclose(torch.tensor([by_id[p.id] for p in pairs]), gap, atol=1e-6)
    kept = load_pairs(kept_path).pairs
    top = {r["id"] for r in rows[:3]}
    assert [p.id for p in kept] == [p.id for p in pairs if p.id in top]  # original order
    printed = capsys.readouterr().out
    assert "scored 6 pairs" in printed and "flip AUROC" in printed and "kept the 3" in printed
    assert "of −margin" in printed


def test_score_bad_input_exits_2(tmp_path, capsys):
    assert main(["score", "--model", "tiny-llama", "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert _run(tmp_path, "--keep-fraction", "1.5", "--keep-out", str(tmp_path / "k.jsonl"))[0] == 2
    assert _run(tmp_path, "--keep-fraction", "0.5")[0] == 2
    assert _run(tmp_path, "--radius", "-1")[0] == 2
    assert "gapo.radius" in capsys.readouterr().err
    assert not (tmp_path / "scores.jsonl").exists()
