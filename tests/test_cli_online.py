"""End-to-end: `robalign train` with the online methods on a tiny model."""

import json

from conftest import make_pairs
from robalign.cli import main

COMMON = ["--model", "tiny-llama", "--max-steps", "2", "--batch-size", "2", "--lora-r", "4", "--max-length", "48",
          "--max-new-tokens", "4", "--progress", "false", "--eval-limit", "2"]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_oracle_robust_on_prompt_only_data(tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p.prompt} for p in make_pairs(6)] + [{"prompt": [{"role": "user", "content": "hi"}]}] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    code = main(["train", *COMMON, "--data", str(data), "--method", "oracle_robust",
                 "--oracle", "bt:length+adversarial:0.1", "--rho", "0.2", "--optimizer", "sgd", "--lr", "0.1",
                 "--projection-radius", "1.0", "--output", "random", "--iterate-every", "1", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    gens = _lines(out / "generations.jsonl")
    assert [g["step"] for g in gens] == [1, 1, 2, 2]
    assert all(g["route"] == "oracle" and isinstance(g["y1"], str) and 0 <= g["observed_prob"] <= 1 for g in gens)
    steps = [m for m in _lines(out / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for key in ("online/oracle_agreement", "online/abs_h", "online/penalty", "online/sf_term", "online/len_y1",
                "online/len_y2", "online/projection_active", "rewards/margins"):
        assert key in steps[0], key
    choice = json.loads((out / "output_iterate.json").read_text())
    assert choice["output"] == "random" and choice["step"] in (0, 1)
    assert (out / "output" / "config.json").is_file() and (out / "final" / "config.json").is_file()


def test_sail_on_preference_pairs(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(12)))
    out = tmp_path / "run"
    code = main(["train", *COMMON, "--data", str(data), "--method", "sail", "--r", "0.2", "--p", "0.3",
                 "--g", "0.3", "--oracle", "bt:length+flip:0.1", "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    steps = [m for m in _lines(out / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    fracs = sum(steps[0][f"sail/frac_{k}"] for k in ("dpo", "dp", "pp", "pr"))
    assert abs(fracs - 1) < 1e-6
    gens = _lines(out / "generations.jsonl") if (out / "generations.jsonl").exists() else []
    sampled = sum(2 * (m["sail/frac_pp"] + m["sail/frac_pr"]) for m in steps)  # 2 pairs per step
    assert len(gens) == round(sampled)
    assert all(g["route"] in ("pp", "pr") for g in gens)


def test_bad_prompt_row_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    code = main(["train", *COMMON, "--data", str(data), "--method", "oracle_robust",
                 "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_sail_shares_over_one_is_a_config_error(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(4)))
    code = main(["train", *COMMON, "--data", str(data), "--method", "sail", "--r", "0.6", "--p", "0.6",
                 "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "sail.r + sail.p + sail.g" in capsys.readouterr().err
