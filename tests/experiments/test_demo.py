"""The main job on a tiny model: learning curves, intervals, early stopping and a paragraph that follows them."""

import json

import pytest

from robalign.cli import main
from robalign.experiments.demo import meaning


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_demo_on_tiny_model_writes_curves_intervals_and_report(tmp_path, capsys):
    code = main(["demo", "--model", "tiny-llama", "--methods", "dpo,cdpo,simpo", "--quick", "--epochs", "2",
                 "--progress", "false", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    runs = result["runs"]
    assert [r["label"] for r in runs] == ["DPO, clean labels", "dpo, flipped labels", "cdpo, flipped labels",
                                          "simpo, flipped labels (M)"]  # SimPO is read on its own reward, M
    assert [r["reward"] for r in runs] == ["h", "h", "h", "M"]
    assert runs[2]["settings"] == {"epsilon": 0.4}  # told the true flip rate
    for r in runs:
        assert [c["epoch"] for c in r["curve"]] == [0.0, 1.0, 2.0]
    for r in runs[:3]:
        assert r["curve"][0]["accuracy"] == 0.5  # step 0: every margin h is exactly 0, a tie counts half
        assert r["curve"][0]["half_width"] == 0.0  # ... so its accuracy has no sampling noise
    for r in runs:
        ci = r["last_minus_peak"]
        assert ci["low"] <= ci["mean"] <= ci["high"] and ci["mean"] <= 0  # last − the best: never above 0
    for r in runs[1:]:
        assert r["noise"] == 0.4 and "minus_clean" in r and 0 <= r["fit_flipped"] <= 1
        assert r["stopped"]["epoch"] in (0.0, 1.0, 2.0)
    assert "fit_flipped" not in runs[0] or runs[0]["noise"] == 0.0
    assert (tmp_path / "demo_learning_curves.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "| dpo, flipped labels |" in report and "## What it means" in report
    assert "came to prefer" in capsys.readouterr().out


def _row(minus_clean, fall, gain):
    def ci(lo, hi):
        return {"mean": (lo + hi) / 2, "low": lo, "high": hi}

    return {"label": "dpo, flipped labels", "method": "dpo", "fit_flipped": 0.9, "peak_epoch": 3,
            "curve": [{"epoch": e} for e in (0, 1, 2, 3, 4)],
            "minus_clean": ci(*minus_clean), "last_minus_peak": ci(*fall), "stopped": {"gain": ci(*gain)}}


def test_the_paragraph_says_only_what_the_intervals_support():
    clean = {"label": "DPO, clean labels", "method": "dpo", "peak_epoch": 1,
             "last_minus_peak": {"mean": -0.04, "low": -0.07, "high": -0.01}}
    hurt = meaning([clean, _row((-0.1, -0.02), (-0.05, -0.01), (0.01, 0.04))], 0.4)
    assert "cost it clean held-out accuracy" in hurt and "then fell" in hurt and "kept" in hurt
    assert "Even on clean labels" in hurt
    unclear = meaning([clean, _row((-0.05, 0.01), (-0.02, 0.0), (-0.01, 0.02))], 0.4)
    assert "did not end measurably below" in unclear and "did not fall measurably" in unclear
    assert "not measurably" in unclear and "cost it" not in unclear
    steady = meaning([{**clean, "last_minus_peak": {"mean": 0.0, "low": -0.02, "high": 0.02}},
                      _row((-0.05, 0.01), (-0.02, 0.0), (-0.01, 0.02))], 0.4)
    assert "Even on clean labels" not in steady
    # A run whose best evaluation is its last did not fall: it says so instead of quoting a zero interval.
    never = meaning([clean, {**_row((-0.05, 0.01), (0.0, 0.0), (-0.01, 0.02)), "peak_epoch": 4}], 0.4)
    assert "best evaluation was its last" in never and "did not fall measurably" not in never


def test_demo_rejects_unknown_method_and_bad_noise(tmp_path, capsys):
    assert main(["demo", "--model", "tiny-llama", "--methods", "dpo,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["demo", "--model", "tiny-llama", "--noise", "0.5", "--out", str(tmp_path)]) == 2
    assert "--noise" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dpo", "cdpo", "gapo", "simpo"])
def test_every_offline_method_gets_a_demo_config_the_cached_trunk_accepts(tmp_path, method):
    """GAPO's anchor must perturb only the trained blocks on the cached trunk: the demo asks the method's
    Params for its trunk-cache settings instead of refusing at start-up."""
    from robalign.config import build_config
    from robalign.experiments.demo import PRESETS, DemoRun, run_tree
    from robalign.methods import build_method

    run = DemoRun(f"{method}, flipped labels", method, True)
    tree = run_tree(run, model="tiny-llama", noise_rate=0.4, preset=PRESETS["quick"], last_k=2, out=tmp_path,
                    seed=0, progress=False)
    cfg = build_config(tree)
    assert build_method(method, cfg.method.params, cfg).trunk_cache_problem(cfg.model.train_last_k) is None
    assert cfg.model.trunk_cache == "disk" and cfg.model.train_last_k == 2
    if method == "cdpo":
        assert cfg.method.params.epsilon == 0.4
