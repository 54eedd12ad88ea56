import json

import pytest

from robalign.cli import main


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_robustness_sweep_caches_cells_and_reports(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo,rdpo", "--kinds", "flip",
            "--rates", "0,0.25", "--seeds", "0", "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8",
            "--gen-prompts", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert cells == ["dpo-flip-0-s0", "dpo-flip-0.25-s0", "rdpo-flip-0-s0", "rdpo-flip-0.25-s0"]
    result = json.loads((tmp_path / "cells" / "rdpo-flip-0.25-s0" / "result.json").read_text())
    assert result["flipped"] == 4 and 0 <= result["accuracy_h"] <= 1
    cell = tmp_path / "cells" / "rdpo-flip-0.25-s0"  # a cell keeps its adapter, not its resume checkpoint
    assert (cell / "adapter" / "adapter_model.safetensors").is_file() and not (cell / "checkpoints").exists()
    assert (tmp_path / "accuracy_h_vs_noise.png").is_file() and (tmp_path / "results.csv").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "| rdpo | flip |" in report
    for metric in ("accuracy_h", "accuracy_M"):
        assert f"{metric}: cost of noise, paired by seed" in report and f"{metric}: each method − dpo" in report
    # A second run reads every cell from its cache: same numbers, nothing retrained.
    stamp = (tmp_path / "cells" / "dpo-flip-0-s0" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "cells" / "dpo-flip-0-s0" / "result.json").stat().st_mtime_ns == stamp
    # --report-only reports the finished cells of a larger grid, names the others and trains none of them.
    capsys.readouterr()
    wider = args[:args.index("0,0.25")] + ["0,0.25,0.5"] + args[args.index("0,0.25") + 1:] + ["--report-only"]
    assert main(wider) == 0
    said = capsys.readouterr().out
    assert "4 of the grid's 6 cells are finished" in said and "dpo-flip-0.5-s0, rdpo-flip-0.5-s0" in said
    assert not (tmp_path / "cells" / "dpo-flip-0.5-s0").exists() and "| rdpo | flip |" in said
    # --report-dir puts a partial report elsewhere and leaves the sweep's own report as it was.
    before = (tmp_path / "report.md").read_text()
    part = args[:args.index("dpo,rdpo")] + ["rdpo"] + args[args.index("dpo,rdpo") + 1:]
    assert main(part + ["--report-only", "--report-dir", str(tmp_path / "rdpo-only")]) == 0
    assert (tmp_path / "report.md").read_text() == before
    partial = (tmp_path / "rdpo-only" / "report.md").read_text()
    assert "| rdpo | flip |" in partial and "| dpo | flip |" not in partial
    assert (tmp_path / "rdpo-only" / "accuracy_h_vs_noise.png").is_file()
    assert (tmp_path / "rdpo-only" / "results.csv").read_text().count("rdpo") == 2


def test_report_only_needs_a_sweep_and_a_finished_cell(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo", "--kinds", "flip", "--rates", "0",
            "--seeds", "0", "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8", "--out", str(tmp_path),
            "--report-only"]
    assert main(args) == 2
    assert "holds no sweep" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(args + ["--report-dir", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err
    from robalign.experiments.spec import SweepSpec, check_settings

    check_settings(SweepSpec("verifiable", ["dpo"], ["flip"], [0.0], [0], "tiny-llama", 2, 4, 5e-4, 16, 8, 256, 16,
                              tmp_path, gen_prompts=16))
    assert main(args) == 2
    assert "no cell of this grid is finished" in capsys.readouterr().err


def _cell(method, kind, rate, seed, acc):
    return {"method": method, "kind": kind, "rate": rate, "seed": seed, "accuracy_M": acc}


def test_paired_differences_subtract_the_same_seed_cell():
    import statistics

    from robalign.experiments.summary import paired_against, paired_noise_cost

    acc = {("dpo", 0, 0): 0.60, ("dpo", 0, 1): 0.70, ("dpo", 0.3, 0): 0.50, ("dpo", 0.3, 1): 0.66,
           ("rdpo", 0, 0): 0.62, ("rdpo", 0, 1): 0.75, ("rdpo", 0.3, 0): 0.58, ("rdpo", 0.3, 1): 0.64}
    results = [_cell(m, "flip", rate, seed, a) for (m, rate, seed), a in acc.items()]
    results.append(_cell("rdpo", "length", 0.3, 0, 0.61))  # no dpo cell to pair with in seed 0 of `length`
    cost = {(r["method"], r["kind"], r["rate"]): r for r in paired_noise_cost(results, "accuracy_M")}
    assert set(cost) == {("dpo", "flip", 0.3), ("rdpo", "flip", 0.3), ("rdpo", "length", 0.3)}
    want = [0.60 - 0.50, 0.70 - 0.66]  # clean − noisy: positive when the noise hurts
    assert abs(cost["dpo", "flip", 0.3]["mean"] - statistics.fmean(want)) < 1e-12
    assert abs(cost["dpo", "flip", 0.3]["std"] - statistics.stdev(want)) < 1e-12
    assert cost["rdpo", "length", 0.3]["n"] == 1 and abs(cost["rdpo", "length", 0.3]["mean"] - (0.62 - 0.61)) < 1e-12
    versus = {(r["method"], r["kind"], r["rate"]): r for r in paired_against(results, "accuracy_M", "dpo")}
    assert set(versus) == {("rdpo", "flip", 0), ("rdpo", "flip", 0.3)}  # the length cell has no partner
    want = [0.58 - 0.50, 0.64 - 0.66]
    assert abs(versus["rdpo", "flip", 0.3]["mean"] - statistics.fmean(want)) < 1e-12
    assert abs(versus["rdpo", "flip", 0.3]["std"] - statistics.stdev(want)) < 1e-12


def test_a_report_marks_values_that_rest_on_fewer_seeds(tmp_path):
    from robalign.experiments.report import write_outputs
    from robalign.experiments.spec import SweepSpec

    spec = SweepSpec("verifiable", ["dpo"], ["flip"], [0.0, 0.3], [0, 1, 2], "tiny-llama", 2, 4, 5e-4, 16, 8, 256, 16,
                     tmp_path)
    results = [_cell("dpo", "flip", 0.0, s, a) for s, a in enumerate([0.5, 0.6, 0.7])]
    results.append(_cell("dpo", "flip", 0.3, 1, 0.55))  # seeds 0 and 2 of rate 0.3 unfinished
    report = write_outputs(spec, results).read_text()
    assert "| dpo | flip | 0.600 ± 0.100 | 0.550 ± 0.000 (n=1) |" in report
    assert "rests on the k of the 3 seeds" in report
    assert "| dpo | flip | 0.050 ± 0.000 (n=1) |" in report  # the paired cost (clean − noisy): seed 1 only
    complete = write_outputs(spec, results[:3], tmp_path / "complete").read_text()
    assert "(n=" not in complete and "rests on" not in complete


def test_bench_rejects_bad_rates(tmp_path, capsys):
    assert main(["bench", "robustness", "--rates", "0,1.5", "--out", str(tmp_path)]) == 2
    assert "rates" in capsys.readouterr().err


def test_bench_refuses_to_mix_settings_in_one_directory(tmp_path, capsys):
    from robalign.experiments.spec import SweepSpec, check_settings

    spec = SweepSpec("verifiable", ["dpo"], ["flip"], [0.0], [0], "tiny-llama", 2, 2, 1e-3, 8, 4, 64, 0, tmp_path)
    check_settings(spec)
    spec.steps = 3
    import pytest

    from robalign.errors import UserError

    with pytest.raises(UserError, match="other settings"):
        check_settings(spec)


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_sweep_on_the_built_in_task_reports_gold_reward_win_rate_and_kl(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo,gapo", "--kinds", "flip",
            "--rates", "0,0.5", "--seeds", "0", "--steps", "2", "--train-pairs", "8", "--eval-pairs", "4",
            "--lora-r", "4", "--gen-prompts", "3", "--gen-max-new-tokens", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "cells" / "dpo-flip-0.5-s0" / "result.json").read_text())
    for key in ("gold_reward_greedy", "ref_gold_reward_greedy", "win_rate_greedy", "win_rate_sampled", "kl"):
        assert key in result, key
    assert 0 <= result["win_rate_greedy"] <= 1 and 0 <= result["gold_reward_greedy"] <= 1
    # Every cell decodes the same reference on the same prompts: its gold reward is one number.
    refs = {json.loads(p.read_text())["ref_gold_reward_greedy"] for p in (tmp_path / "cells").glob("*/result.json")}
    assert len(refs) == 1
    # Each prompt's rewards are kept, in prompt order, so cells are compared prompt by prompt.
    rows = [json.loads(x) for x in (tmp_path / "cells" / "dpo-flip-0.5-s0" / "gold_generations.jsonl")
            .read_text().splitlines()]
    assert len(rows) == 3 and "kl_sample_ids" not in rows[0]
    assert abs(sum(r["reward_policy_greedy"] for r in rows) / 3 - result["gold_reward_greedy"]) < 1e-12
    assert abs(sum(r["reward_reference_greedy"] for r in rows) / 3 - result["ref_gold_reward_greedy"]) < 1e-12
    report = (tmp_path / "report.md").read_text()
    assert "## gold_reward_greedy" in report and "## kl" in report and "GAPO weights" in report
    assert "| gapo | flip 0.5 |" in report.split("Gold reward of greedy generations − dpo's")[1]
    assert (tmp_path / "gold_reward_vs_kl.png").is_file()
    assert (tmp_path / "gapo_weights_flipped_vs_clean.png").is_file()
    auroc = json.loads((tmp_path / "cells" / "gapo-flip-0.5-s0" / "result.json").read_text())["gapo_flip_auroc"]
    assert f"| gapo | flip | {auroc:.3f} ± 0.000 |" in report.split("## GAPO flip AUROC")[1]


def test_online_methods_in_a_sweep_get_the_noise_in_their_oracle(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "oracle_robust", "--kinds", "flip,margin",
            "--rates", "0,0.3", "--seeds", "0", "--steps", "1", "--train-pairs", "4", "--eval-pairs", "4",
            "--lora-r", "4", "--gen-prompts", "2", "--gen-max-new-tokens", "3", "--out", str(tmp_path)]
    assert main(args) == 0
    cells = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert cells == ["oracle_robust-flip-0-s0", "oracle_robust-flip-0.3-s0"]  # no rate-like margin oracle
    assert "take no ['margin'] noise" in capsys.readouterr().out  # the skipped cells are announced
    noisy = json.loads((tmp_path / "cells" / "oracle_robust-flip-0.3-s0" / "result.json").read_text())
    assert noisy["oracle"] == "bt:verifiable:0.1+flip:0.3" and "gold_reward_greedy" in noisy
    gens = [json.loads(x) for x in (tmp_path / "cells" / "oracle_robust-flip-0.3-s0" / "generations.jsonl")
            .read_text().splitlines()]
    assert gens and all(0 <= g["gold_prob"] <= 1 for g in gens)
    clean = json.loads((tmp_path / "cells" / "oracle_robust-flip-0-s0" / "result.json").read_text())
    assert clean["oracle"] == "bt:verifiable:0.1"


def test_online_methods_need_the_built_in_task(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert main(["bench", "robustness", "--data", str(data), "--methods", "sail", "--out", str(tmp_path)]) == 2
    assert "need a gold oracle" in capsys.readouterr().err


def test_gen_prompts_need_a_gold_reward(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert main(["bench", "robustness", "--data", str(data), "--gen-prompts", "4", "--out", str(tmp_path)]) == 2
    assert "gold reward" in capsys.readouterr().err


def test_margin_noise_on_a_file_without_scores_fails_before_any_cell(tmp_path, capsys):
    from argparse import Namespace

    from robalign.experiments.cli import _kinds

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                    '{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1, "rejected_score": 0}\n')
    assert main(["bench", "robustness", "--data", str(data), "--kinds", "flip,margin", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "margin noise needs chosen_score" in err and "1 of its 2 pairs" in err and str(data) in err
    assert not (tmp_path / "cells").exists()
    assert _kinds(Namespace(kinds=None, data=str(data))) == ["flip", "length"]  # the default leaves margin out
    scored = tmp_path / "scored.jsonl"
    scored.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1, "rejected_score": 0}\n')
    assert _kinds(Namespace(kinds=None, data=str(scored))) == ["flip", "length", "margin"]
    assert _kinds(Namespace(kinds="margin", data="verifiable")) == ["margin"]


def test_sweep_on_model_sampled_pairs_caches_the_sampled_set(tmp_path, capsys):
    args = ["bench", "robustness", "--data", "verifiable-sampled", "--model", "tiny-llama", "--methods", "dpo",
            "--kinds", "flip", "--rates", "0.5", "--seeds", "0", "--steps", "2", "--train-pairs", "8",
            "--eval-pairs", "4", "--max-length", "96", "--gen-prompts", "2", "--gen-max-new-tokens", "4",
            "--out", str(tmp_path)]
    assert main(args) == 0
    files = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert len(files) == 2 and all("verifiable-sampled" in f for f in files)
    result = json.loads((tmp_path / "cells" / "dpo-flip-0.5-s0" / "result.json").read_text())
    assert result["flipped"] == 4 and "gold_reward_greedy" in result


def test_cell_lock_lets_one_process_train_a_cell_and_takes_over_stale_locks(tmp_path):
    import os
    import subprocess
    import sys

    from robalign.experiments.cells import cell_lock

    cell = tmp_path / "cells" / "dpo-flip-0-s0"
    with cell_lock(cell) as mine:
        assert mine and (cell / ".lock").read_text() == str(os.getpid())
        with cell_lock(cell) as again:  # held by a live process (this one): not ours
            assert not again
    assert not (cell / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (cell / ".lock").write_text(dead.stdout.strip())  # left by a process that no longer runs
    with cell_lock(cell) as mine:
        assert mine


def test_a_cell_left_half_written_by_a_kill_is_retrained_cleanly(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "gapo", "--kinds", "flip", "--rates",
            "0.25", "--seeds", "0", "--steps", "2", "--train-pairs", "8", "--eval-pairs", "4", "--gen-prompts", "0",
            "--out", str(tmp_path)]
    cell = tmp_path / "cells" / "gapo-flip-0.25-s0"
    cell.mkdir(parents=True)
    (cell / "pairs.jsonl").write_text('{"step": 1, "weight": 0.5}\n{"step": 2, "wei')  # cut by a kill
    stale = cell / "checkpoints" / "step-00000002"  # the killed run's last checkpoint, of the step this run also saves
    stale.mkdir(parents=True)
    (stale / "weights.safetensors").write_bytes(b"not the new run's weights")
    assert main(args) == 0
    assert not stale.exists() and (cell / "adapter" / "adapter_model.safetensors").is_file()
    result = json.loads((cell / "result.json").read_text())
    assert result["gapo_pairs"] > 0 and not (cell / ".lock").exists()


def test_a_cell_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys, caplog):
    import logging

    def args(out):
        return ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo", "--kinds", "flip", "--rates",
                "0.25", "--seeds", "0", "--epochs", "2", "--train-pairs", "16", "--eval-pairs", "8", "--lora-r", "0",
                "--train-last-k", "1", "--gen-prompts", "0", "--out", str(out)]

    assert main(args(tmp_path / "whole")) == 0
    # The killed run: dies after step 3 of 8 (checkpoints every step here), before its result and clean-up.
    from robalign.trainer import Trainer

    class Killed(Exception):
        pass

    real_train = Trainer.train

    def train_then_die(self, *a, **k):
        self.cfg.train.stop_after = 3
        real_train(self, *a, **k)
        raise Killed

    monkeypatch.setattr(Trainer, "train", train_then_die)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        main(args(killed))
    cell = killed / "cells" / "dpo-flip-0.25-s0"
    assert not (cell / "result.json").exists()
    assert sorted(p.name for p in (cell / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    monkeypatch.setattr(Trainer, "train", real_train)
    with caplog.at_level(logging.INFO, logger="robalign.trainer"):
        assert main(args(killed)) == 0
    assert "step-00000003 at step 3" in caplog.text  # resumed, not trained again from step 0
    losses = [[r["loss"] for r in map(json.loads, (d / "cells" / "dpo-flip-0.25-s0" / "metrics.jsonl").open())
               if "loss" in r] for d in (tmp_path / "whole", killed)]
    assert len(losses[0]) == 8 and losses[0] == losses[1]  # steps 4-8 trained after the resume, logs cut at 3
    whole, resumed = (json.loads((d / "cells" / "dpo-flip-0.25-s0" / "result.json").read_text())
                      for d in (tmp_path / "whole", killed))
    for key in ("accuracy_h", "margin_h", "accuracy_M", "curve", "best_epoch"):
        assert resumed[key] == whole[key], key
    assert resumed["resumed"] is True and "resumed" not in whole


def test_the_clean_cell_is_shared_by_every_noise_kind(tmp_path):
    """Rate 0 trains on the same clean pairs whatever the kind: a `length` sweep reuses the clean cell a
    `flip` sweep left, and its report and plots start the `length` curve from it."""
    base = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo", "--seeds", "0", "--steps", "2",
            "--train-pairs", "16", "--eval-pairs", "8", "--gen-prompts", "0", "--out", str(tmp_path)]
    assert main(base + ["--kinds", "flip", "--rates", "0"]) == 0
    clean = tmp_path / "cells" / "dpo-flip-0-s0" / "result.json"
    stamp, accuracy = clean.stat().st_mtime_ns, json.loads(clean.read_text())["accuracy_h"]
    assert main(base + ["--kinds", "length", "--rates", "0,0.25"]) == 0
    assert clean.stat().st_mtime_ns == stamp  # reused, not retrained
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["dpo-flip-0-s0", "dpo-length-0.25-s0"]
    report = (tmp_path / "report.md").read_text()
    assert f"| dpo | length | {accuracy:.3f} ± 0.000 |" in report and "| dpo | flip |" not in report


def test_cells_of_one_sweep_share_the_reference_log_probs_of_their_held_out_split(tmp_path, monkeypatch):
    import robalign.evaluate as evaluate
    import robalign.reference as reference

    caches, computed = [], []
    real_init = evaluate.PreferenceEvaluator.__init__
    real_logps = reference.AdapterDisabledReference.logps

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        caches.append(self.reference_cache)

    def counting_logps(self, batch):
        computed.append(batch.num_pairs)
        return real_logps(self, batch)

    common = ["bench", "robustness", "--model", "tiny-llama", "--kinds", "flip", "--rates", "0.25", "--seeds", "0",
              "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8", "--gen-prompts", "0"]
    monkeypatch.setattr(evaluate.PreferenceEvaluator, "__init__", recording_init)
    monkeypatch.setattr(reference.AdapterDisabledReference, "logps", counting_logps)
    assert main(common + ["--methods", "dpo,ipo", "--out", str(tmp_path / "both")]) == 0
    assert len(caches) == 2 and caches[0] is caches[1] and len(caches[0]) == 1  # one split, scored once
    # The two methods train on the same batches: the reference scores each of them once, for dpo, and ipo
    # reads them from the sweep's memo (2 training batches of 4 pairs + 1 held-out batch of 8).
    assert sorted(computed) == [4, 4, 8]
    assert len(list((tmp_path / "both" / "reference_memo").glob("*.safetensors"))) == 3
    # The second cell read the first one's numbers: alone (a fresh cache) it gives the same results.
    assert main(common + ["--methods", "ipo", "--out", str(tmp_path / "ipo")]) == 0
    alone, shared = (json.loads((tmp_path / d / "cells" / "ipo-flip-0.25-s0" / "result.json").read_text())
                     for d in ("ipo", "both"))
    assert alone.pop("seconds") > 0 and shared.pop("seconds") > 0
    assert alone == shared and alone["accuracy_h"] is not None


def test_a_method_missing_from_a_panel_keeps_its_colour_and_its_legend_entry(tmp_path, monkeypatch):
    import matplotlib.figure

    from robalign.experiments.plots import plot_accuracy

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k)))
    rows = [{"method": m, "kind": k, "rate": rate, "mean": 0.6, "std": 0.01}
            for m in ("dpo", "sail", "simpo") for k in ("flip", "margin") for rate in (0.1, 0.4)
            if not (m == "sail" and k == "margin")]  # like an online method, absent from the margin panel
    plot_accuracy(rows, ["flip", "margin"], tmp_path / "acc.png", "accuracy_M")
    assert (tmp_path / "acc.png").is_file()
    flip_ax, margin_ax = figures[0].axes[:2]

    def colours(ax):
        return {c.get_label(): tuple(c.lines[0].get_color()) for c in ax.containers}

    assert colours(margin_ax)["simpo"] == colours(flip_ax)["simpo"]
    assert [t.get_text() for t in margin_ax.get_legend().get_texts()] == ["dpo", "sail", "simpo"]


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_an_epochs_sweep_on_the_cached_trunk_records_curves_and_computes_the_trunk_once(tmp_path, capsys):
    args = ["bench", "robustness", "--model", "tiny-llama", "--methods", "dpo,gapo", "--kinds", "flip",
            "--rates", "0,0.25", "--seeds", "0", "--epochs", "2", "--batch-size", "4", "--train-pairs", "16",
            "--eval-pairs", "8", "--gen-prompts", "0", "--train-last-k", "1", "--trunk-cache", "disk",
            "--out", str(tmp_path)]
    assert main(args) == 0
    shards = list((tmp_path / "trunk").glob("*/shard-*.safetensors"))
    assert len(shards) == 1  # the first cell computed every text; the other three read it
    shown = capsys.readouterr().err  # a long-training cell shows its progress inside the sweep's bar
    assert "trunk cache" in shown and "dpo: 100%" in shown
    for cell in ("dpo-flip-0.25-s0", "gapo-flip-0-s0"):
        result = json.loads((tmp_path / "cells" / cell / "result.json").read_text())
        assert [r["epoch"] for r in result["curve"]] == [0.0, 1.0, 2.0]
        assert result["best_epoch"] in (0.0, 1.0, 2.0)
    noisy = json.loads((tmp_path / "cells" / "dpo-flip-0.25-s0" / "result.json").read_text())
    assert "fit_flipped" in noisy["curve"][1] and "fit_clean" in noisy["curve"][1]
    assert noisy["best_accuracy_h"] == max(r["accuracy_h"] for r in noisy["curve"])
    assert (tmp_path / "cells" / "dpo-flip-0.25-s0" / "learning_curves.png").is_file()
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["epochs"] == 2 and settings["trunk_cache"] == "disk"
    report = (tmp_path / "report.md").read_text()
    assert "2 epochs x 4 pairs" in report and "last 1 blocks" in report
    assert "| dpo | flip 0.25 |" in report.split("at the last and at the best epoch")[1]
    paired = report.split("− dpo's, each on its own implicit reward")[1]
    # GAPO trains the reference-free SimPO margin by default: it is scored on M, DPO on h
    assert "| gapo (M) | flip 0.25 |" in paired and "| 1 | 8 |" in paired  # one seed, 8 held-out pairs
    gapo = json.loads((tmp_path / "cells" / "gapo-flip-0.25-s0" / "result.json").read_text())
    assert (noisy["reward"], gapo["reward"]) == ("h", "M")
    assert gapo["best_accuracy_M"] == max(r["accuracy_M"] for r in gapo["curve"])
    assert (tmp_path / "learning_curves_accuracy_own.png").is_file()


def test_param_sets_a_method_setting_in_its_cells_and_the_report(tmp_path):
    from robalign.experiments.cells import cell_config
    from robalign.experiments.report import _settings_line
    from robalign.experiments.spec import SweepSpec, parse_params

    params = parse_params(["cdpo.epsilon=0.4", "sympo.kind=ramp", "gapo.radius=0.5"], ["dpo", "cdpo", "sympo", "gapo"])
    assert params == {"cdpo": {"epsilon": 0.4}, "sympo": {"kind": "ramp"}, "gapo": {"radius": 0.5}}
    spec = SweepSpec(data="verifiable", methods=["dpo", "cdpo", "sympo"], kinds=["flip"], rates=[0.4], seeds=[0],
                     model="tiny-llama", steps=2, batch_size=2, lr=1e-3, train_pairs=8, eval_pairs=4,
                     max_length=64, lora_r=0, out=tmp_path, params=params)
    cfg, _ = cell_config(spec, "cdpo", "flip", 0.4, 0, tmp_path / "c", 8)
    assert cfg.method.epsilon == 0.4  # over the sweep's default of 0.2
    assert cell_config(spec, "rdpo", "flip", 0.4, 0, tmp_path / "c", 8)[0].method.epsilon == 0.2
    assert cell_config(spec, "sympo", "flip", 0.4, 0, tmp_path / "c", 8)[0].method.kind == "ramp"
    line = _settings_line(spec)
    assert "cdpo epsilon=0.4" in line and "sympo kind=ramp" in line and "dpo " not in line.replace("cdpo", "")


def test_param_rate_tells_each_cell_its_own_noise_rate(tmp_path):
    from robalign.experiments.cells import cell_config
    from robalign.experiments.report import _settings_line
    from robalign.experiments.spec import SweepSpec, parse_params

    spec = SweepSpec(data="verifiable", methods=["dpo", "rdpo"], kinds=["flip"], rates=[0, 0.3], seeds=[0],
                     model="tiny-llama", steps=2, batch_size=2, lr=1e-3, train_pairs=8, eval_pairs=4,
                     max_length=64, lora_r=0, out=tmp_path, params=parse_params(["rdpo.epsilon=rate"], ["rdpo"]))
    assert [cell_config(spec, "rdpo", "flip", r, 0, tmp_path / "c", 8)[0].method.epsilon for r in (0.3, 0.0)] == [0.3, 0]
    assert "rdpo epsilon=the true noise rate" in _settings_line(spec)


def test_param_errors_are_one_message_before_anything_loads(tmp_path, capsys):
    for bad, says in ((["--param", "cdpo.epsilon"], "METHOD.KEY=VALUE"),
                      (["--param", "ipo.epsilon=0.1"], "not one of --methods"),
                      (["--param", "cdpo.rho=0.1"], "rho"),
                      (["--param", "cdpo.epsilon=0.7"], "[0, 0.5)"),
                      (["--param", "cdpo.epsilon=rate", "--rates", "0,0.6"], "[0, 0.5)")):
        assert main(["bench", "robustness", "--methods", "dpo,cdpo", "--out", str(tmp_path / "out"), *bad]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("error:") == 1, err
        assert not (tmp_path / "out").exists()


def test_param_of_a_method_section_goes_to_that_section(tmp_path):
    from robalign.experiments.cells import cell_config
    from robalign.experiments.spec import SweepSpec

    spec = SweepSpec(data="verifiable", methods=["gapo"], kinds=["flip"], rates=[0.4], seeds=[0],
                     model="tiny-llama", steps=2, batch_size=2, lr=1e-3, train_pairs=8, eval_pairs=4,
                     max_length=64, lora_r=0, out=tmp_path, params={"gapo": {"radius": 0.5}})
    cfg, _ = cell_config(spec, "gapo", "flip", 0.4, 0, tmp_path / "c", 8)
    assert cfg.method.radius == 0.5


def test_bench_validates_a_data_file_as_train_does(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    assert main(["bench", "robustness", "--data", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "rejected" in err and not (tmp_path / "out").exists()


def test_bench_help_shows_every_default(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["bench", "robustness", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--lr", "0.0005"), ("--eval-pairs", "64"), ("--threads", "0"), ("--out", "outputs/robustness")):
        assert flag in said and f"(default: {default})" in said, flag


def test_accuracy_plot_is_labelled_and_keeps_coinciding_methods_apart(tmp_path, monkeypatch):
    from robalign.experiments import plots

    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda ax, x, y, **kw: drawn.append((list(x), kw["marker"])) or original(ax, x, y, **kw))
    rows = [{"method": m, "kind": "flip", "rate": r, "mean": 0.6, "std": 0.0, "n": 1}
            for m in ("dpo", "ipo") for r in (0.0, 0.4)]  # identical values: the lines coincide
    plots.plot_accuracy(rows, ["flip"], tmp_path / "a.png", "accuracy_h", caption="data x, 3 epochs")
    (x_dpo, m_dpo), (x_ipo, m_ipo) = drawn
    assert m_dpo != m_ipo and all(a != b for a, b in zip(x_dpo, x_ipo))
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_every_numeric_flag_is_range_checked_before_anything_is_written(tmp_path, capsys):
    for bad, says in ((["--epochs", "-1"], "--epochs"), (["--train-pairs", "0"], "--train-pairs"),
                      (["--eval-pairs", "-5"], "--eval-pairs"), (["--seeds", "-1"], "--seeds"),
                      (["--seeds", "a"], "--seeds"), (["--lr", "nan"], "--lr"), (["--threads", "-2"], "--threads")):
        assert main(["bench", "robustness", "--methods", "dpo", "--out", str(tmp_path / "out"), *bad]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("error:") == 1, err
    assert not (tmp_path / "out").exists()
    assert main(["demo", "--seed", "-1", "--out", str(tmp_path / "demo")]) == 2
    assert "--seed" in capsys.readouterr().err


def test_keep_fraction_reaches_each_cell_and_is_checked_first(tmp_path, capsys):
    from robalign.experiments.cells import cell_config
    from robalign.experiments.report import _keep_line
    from robalign.experiments.spec import SweepSpec

    spec = SweepSpec(data="verifiable", methods=["dpo"], kinds=["flip"], rates=[0.4], seeds=[0],
                     model="tiny-llama", steps=2, batch_size=2, lr=1e-3, train_pairs=8, eval_pairs=4,
                     max_length=64, lora_r=0, out=tmp_path, keep_fraction=0.6)
    assert cell_config(spec, "dpo", "flip", 0.4, 0, tmp_path / "c", 8)[0].data.keep_fraction == 0.6
    assert "60%" in _keep_line(spec)
    for bad, says in ((["--keep-fraction", "0"], "(0, 1]"), (["--methods", "dpo,sail", "--keep-fraction", "0.5"],
                                                              "online methods")):
        assert main(["bench", "robustness", "--out", str(tmp_path / "out"), *bad]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "out").exists()
