"""lab/scripts/margin_signals.py: flip AUROCs of training-margin scores, against a hand count."""

import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab" / "scripts"))

import margin_signals  # noqa: E402


def test_aurocs_by_hand(tmp_path, capsys):
    # pairs 0, 1 flipped; 2, 3 clean; pair 4 never trained (NaN: filtered out). Epoch 1 ranks the flips
    # perfectly (−margin highest on them); epoch 2 gets one flipped/clean couple of four wrong.
    margin = torch.tensor([[-2.0, -1.0, 1.0, 2.0, math.nan],
                           [0.5, 3.0, 1.0, 2.0, math.nan]])
    flipped = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    result = margin_signals.aurocs(margin, flipped)
    assert result["-margin, epoch 1"] == 1.0
    # −margin epoch 2: flipped −0.5, −3; clean −1, −2 → couples won: (−0.5>−1), (−0.5>−2), (−3<−1), (−3<−2) = 2/4
    assert result["-margin, epoch 2"] == 0.5
    # AUM: flipped −0.75, 1.0; clean 1.0, 2.0 → −AUM 0.75, −1.0 vs −1.0, −2.0: wins 1 + 1 + 0.5 + 1 = 3.5 / 4
    assert result["-AUM"] == 0.875
    assert result["-AUM, first half"] == result["-margin, epoch 1"]
    cell = tmp_path / "cell"
    cell.mkdir()
    save_file({"margin": margin, "is_flipped": flipped}, str(cell / "train_margins.safetensors"))
    assert margin_signals.main([str(cell)]) == 0
    assert "flip AUROC of -AUM" in capsys.readouterr().out
    assert margin_signals.main([str(tmp_path / "missing")]) == 2
