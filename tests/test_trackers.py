"""train.report_to: each tracker in its offline / local mode, read back from where it wrote."""

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pairs
from robalign import trackers
from robalign.config import build_config
from robalign.errors import ConfigError, UserError
from robalign.metrics import read_jsonl

pytestmark = pytest.mark.integration  # subprocesses, torchrun or real runs: the integration tier


def test_rows_reach_trackers_with_train_and_eval_prefixes():
    row = {"step": 3, "epoch": 0.5, "learning_rate": 1e-4, "loss": 0.25, "rewards/accuracies": 0.5,
           "eval/accuracy_h": 0.75, "train/fit_clean": 0.4, "grad_norm": float("nan"), "note": "x", "flag": True}
    assert trackers.tracker_metrics(row) == {
        "train/epoch": 0.5, "train/learning_rate": 1e-4, "train/loss": 0.25, "train/rewards/accuracies": 0.5,
        "eval/accuracy_h": 0.75, "train/fit_clean": 0.4}


@pytest.mark.parametrize("train,want", [
    ({}, []),
    ({"report_to": "none"}, []),
    ({"report_to": "wandb, mlflow"}, ["wandb", "mlflow"]),
    ({"report_to": ["trackio"], "tensorboard": True}, ["trackio", "tensorboard"]),
    ({"tensorboard": True}, ["tensorboard"]),  # the older key, an alias
])
def test_report_to_reads_a_list_or_a_comma_string(train, want):
    assert trackers.requested(build_config({"train": train}).train) == want


@pytest.mark.parametrize("value,needle", [("wandbb", "'wandbb' is not one of none, tensorboard"),
                                          ("none,wandb", "'none' together with wandb")])
def test_report_to_rejects_unknown_names(value, needle):
    with pytest.raises(ConfigError, match="train.report_to") as err:
        build_config({"train": {"report_to": value}})
    assert needle in str(err.value)


def test_a_missing_package_is_one_message_before_the_run_directory(tmp_path, capsys, monkeypatch):
    from robalign.cli import main

    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        # tensorboard counts as installed whether it is or not (a fresh venv has none of them)
                        lambda name, *a: None if name in ("wandb", "mlflow") else (real(name, *a) or object()))
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 4)
    code = main(["train", "--model", "tiny-llama", "--data", str(data), "--output-dir", str(tmp_path / "run"),
                 "--report-to", "wandb,mlflow,tensorboard", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("robalign: error:") == 1 and "Traceback" not in err
    assert "wandb, mlflow requested but not installed" in err and "robalign[wandb,mlflow]" in err
    assert not (tmp_path / "run").exists()


def test_old_metrics_logs_read_under_trls_names(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "lr": 0.001}\n{"step": 2, "learning_rate": 0.002}\n')
    assert [r["learning_rate"] for r in read_jsonl(path)] == [0.001, 0.002]


# --- end to end: one tiny run per tracker setting ---------------------------------------------------------------

def _data(tmp_path) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p.to_row()) + "\n" for p in make_pairs(8)))
    return data


def _train(tmp_path, out, *extra, nproc=1, env=None):
    args = ["train", "--model", "tiny-llama", "--data", str(_data(tmp_path)), "--eval-data", str(_data(tmp_path)),
            "--lora-r", "0", "--max-steps", "2", "--batch-size", "2", "--max-length", "48", "--progress", "false",
            "--output-dir", str(out), *extra]
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(29700 + os.getpid() % 1000)] if nproc > 1 else []
    # Run in tmp_path (nothing may land in the working directory), importing this checkout's robalign.
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {k: v for k, v in {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})}.items()
           if v is not None}
    r = subprocess.run([sys.executable, *launcher, "-m", "robalign.cli", *args], capture_output=True, text=True,
                       timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(folder / "events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline W&B run file (a LevelDB-style log of `Record` protos, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    raw, rows, pending = run_file.read_bytes(), [], b""
    pos, block = 7, 32768  # after the file header ":W&B" + magic + version
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.mark.parametrize("flags", [["--report-to", "tensorboard"], ["--tensorboard"]])
def test_tensorboard_events_read_back(tmp_path, flags):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    _train(tmp_path, out, *flags)
    scalars = _tensorboard_scalars(out / "tb")
    assert scalars["train/loss"] == [1, 2] and scalars["train/learning_rate"] == [1, 2]
    assert scalars["eval/accuracy_h"] == [0, 2] and "train/rewards/accuracies" in scalars
    assert not any(tag in scalars for tag in ("loss", "lr", "learning_rate", "step"))


def test_wandb_trackio_and_mlflow_offline_read_back(tmp_path):
    for name in ("wandb", "trackio", "mlflow"):
        pytest.importorskip(name)
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "TRACKIO_PROJECT": "robalign-test", "MLFLOW_TRACKING_URI": None}  # None: mlflow's store in the run dir
    _train(tmp_path, out, "--report-to", "wandb,trackio,mlflow", "--run-name", "tiny", env=env)
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]

    run_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    history = _wandb_history(run_file)
    losses = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert losses == {r["step"]: pytest.approx(r["loss"]) for r in logged}
    assert any("eval/accuracy_h" in row for row in history)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("robalign").experiment_id])
    assert run.info.run_name == "tiny" and run.data.params["method.name"] == "dpo"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step: m.value for m in history} == {r["step"]: pytest.approx(r["loss"]) for r in logged}
    assert sorted(os.listdir(tmp_path)) == ["pairs.jsonl", "run", "trackio"]  # nothing in the working directory

    reader = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
              "print(json.dumps(S.get_logs('robalign-test', 'tiny')))")
    r = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")})
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert {row["step"]: row["train/loss"] for row in rows if "train/loss" in row} == {
        r["step"]: pytest.approx(r["loss"]) for r in logged}


def test_only_the_main_process_reports(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "two"
    _train(tmp_path, out, "--report-to", "tensorboard", nproc=2)
    assert _tensorboard_scalars(out / "tb")["train/loss"] == [1, 2]  # one event file, one value per step


def test_trackers_are_closed_when_one_fails_to_start(tmp_path, monkeypatch):
    closed = []

    class Fine:
        def __init__(self, info):
            pass

        def close(self):
            closed.append("fine")

    class Broken:
        def __init__(self, info):
            raise RuntimeError("no login")

    monkeypatch.setitem(trackers.TRACKERS, "tensorboard", Fine)
    monkeypatch.setitem(trackers.TRACKERS, "wandb", Broken)
    monkeypatch.setattr(trackers, "check_installed", lambda names: None)
    with pytest.raises(UserError, match="wandb could not start: no login"):
        trackers.Trackers(["tensorboard", "wandb"], trackers.RunInfo(tmp_path, "r", {}))
    assert closed == ["fine"]
