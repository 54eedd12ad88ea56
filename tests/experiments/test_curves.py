"""The long-training report's paired cost of noise, against a hand count."""

import torch
from safetensors.torch import save_file

from robalign.experiments.curves import _cost_of_noise


def test_cost_of_noise_is_clean_minus_noisy_correctness_on_the_same_pairs(tmp_path):
    clean = torch.tensor([[0.0] * 4, [1.0, 1.0, 1.0, -1.0]])  # last epoch: 3 of 4 right
    noisy = torch.tensor([[0.0] * 4, [1.0, -1.0, 0.0, -1.0]])  # last epoch: 1 right, 1 tie (half)
    for name, h in (("clean", clean), ("noisy", noisy)):
        (tmp_path / name).mkdir()
        save_file({"h": h, "epoch": torch.tensor([0.0, 1.0], dtype=torch.float64)},
                  str(tmp_path / name / "heldout_margins.safetensors"))
    results = [{"method": "dpo", "kind": "flip", "rate": 0.0, "seed": 0},
               {"method": "dpo", "kind": "flip", "rate": 0.4, "seed": 0}]
    lines = _cost_of_noise(results, lambda r: tmp_path / ("clean" if r["rate"] == 0 else "noisy"), "h")
    row = next(line for line in lines if line.startswith("| dpo | flip 0.4 |"))
    assert "+0.375" in row  # 0.75 − (1 + 0 + 0.5 + 0) / 4
