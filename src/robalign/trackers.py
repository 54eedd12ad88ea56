"""Experiment trackers (`train.report_to`): TensorBoard, Weights & Biases, Trackio, MLflow.

metrics.jsonl stays the run's record; a tracker gets a copy of each logged row, named as TRL's runs name
them in these tools: `train/<name>` for training metrics (`train/loss`, `train/learning_rate`, ...) and
`eval/<name>` for held-out ones. Trackers are opened by the main process only (the one that writes
metrics.jsonl), so a multi-process run is one run in each tool. Each library is used directly: the run
directory decides where local stores go, which accelerate's tracker wrappers do not let us say per tool.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from robalign.errors import UserError

# report_to name -> the module it needs (the pip extra of robalign that installs it has the same name).
BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
REPORT_TO = ("none", *BACKENDS)


def requested(train_cfg) -> list[str]:
    """The trackers a TrainConfig asks for: `report_to`, plus TensorBoard for the older `tensorboard: true`."""
    names = [n for n in train_cfg.report_to if n != "none"]
    if train_cfg.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def check_installed(names: list[str]) -> None:
    """One UserError naming every requested tracker whose package is missing, and how to install it."""
    missing = [n for n in names if importlib.util.find_spec(BACKENDS[n]) is None]
    if missing:
        extras = ",".join(missing)
        raise UserError(f"train.report_to: {', '.join(missing)} requested but not installed "
                        f"(pip install 'robalign[{extras}]', or leave {' and '.join(missing)} out of report_to)")


def tracker_metrics(record: dict) -> dict[str, float]:
    """A metrics.jsonl row as trackers get it: finite numbers only, `train/` or `eval/` in front of each name."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[key if key.startswith(("train/", "eval/")) else f"train/{key}"] = float(value)
    return out


@dataclass
class RunInfo:
    """What every tracker is opened with.

    Attributes:
        out: the run directory (local stores go under it).
        name: the run's name in the tracker.
        config: the run's settings, `RunConfig.to_dict()`.
        resumed_at: the checkpoint step a resumed run continues from (None: a new run).
    """

    out: Path
    name: str
    config: dict
    resumed_at: int | None = None


class TensorBoardTracker:
    """Event files in `<out>/tb`; a resumed run drops the events its predecessor wrote after the checkpoint."""

    def __init__(self, info: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if info.resumed_at is None else info.resumed_at + 1
        self.writer = SummaryWriter(str(info.out / "tb"), purge_step=purge)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in project $WANDB_PROJECT (default 'robalign'), files under `<out>/wandb`; WANDB_MODE=offline
    keeps it on this machine (`wandb sync` uploads it later)."""

    def __init__(self, info: RunInfo):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "robalign"), name=info.name,
                              dir=str(info.out), config=info.config, reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A Trackio run in project $TRACKIO_PROJECT (default 'robalign'), stored locally in trackio's own folder
    ($TRACKIO_DIR, default ~/.cache/huggingface/trackio; `trackio show` opens the dashboard) unless
    $TRACKIO_SPACE_ID names a Space."""

    def __init__(self, info: RunInfo):
        import trackio

        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "robalign"), name=info.name,
                                config=info.config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in experiment $MLFLOW_EXPERIMENT_NAME (default 'robalign') of $MLFLOW_TRACKING_URI, or, when
    that is unset, of a local store in the run directory (`<out>/mlflow.db`: MLflow 3 refuses its older
    file store; `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db` shows it)."""

    def __init__(self, info: RunInfo):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = "MLFLOW_TRACKING_URI" not in os.environ
        uri = f"sqlite:///{info.out.resolve() / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"]
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "robalign")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:  # artifacts (none are logged today) would otherwise go to ./mlruns
            where = (info.out.resolve() / "mlartifacts").as_uri() if local else None
            experiment_id = self.client.create_experiment(name, artifact_location=where)
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=info.name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(info.config).items()]
        self.client.log_batch(self.run_id, params=params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker,
            "mlflow": MlflowTracker}


def _flatten(config: dict) -> dict:
    return {f"{section}.{key}": value for section, body in config.items() for key, value in body.items()}


class Trackers:
    """The open trackers of a run; with none it does nothing (the null object the trainer always holds)."""

    def __init__(self, names: list[str], info: RunInfo):
        check_installed(names)
        self.open = []
        try:
            for name in names:
                self.open.append(TRACKERS[name](info))
        except UserError:
            self.close()
            raise
        except Exception as err:  # e.g. W&B online without a login: say which tracker, not a traceback
            self.close()
            raise UserError(f"train.report_to: {name} could not start: {err}") from None

    def log(self, record: dict) -> None:
        if not self.open or "step" not in record:
            return
        metrics = tracker_metrics(record)
        for tracker in self.open:
            tracker.log(metrics, record["step"])

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []
