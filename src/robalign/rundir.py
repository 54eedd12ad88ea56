"""A run directory always describes one run: never mixed with another, never silently changed.

- Starting a run where one already is needs `--resume` (continue it) or `--overwrite` (replace it).
- `--resume` refuses settings that differ from the run's `config.yaml` (they would change the run half-way),
  except those that only change how it is watched (`WATCH_ONLY`).
- One process trains into a directory at a time (`RunLock`); a second is refused, never interleaved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import yaml

from robalign.errors import UserError

# What a run writes; `--overwrite` removes exactly these (a user's own files in the folder stay).
# (ref_cache/ is keyed by model and data, so an old one is never read by mistake, and a new run may have
# written it before training starts.)
RUN_FILES = ("config.yaml", "metrics.jsonl", "pairs.jsonl", "checkpoints", "final", ".tmp-final", "tb", "wandb",
             "mlflow.db", "mlartifacts",
             "learning_curves.png", "heldout_margins.safetensors", "generations.jsonl", "gapo_summary.json",
             "iterates", "output")
# Settings that change how a run is watched or paused, not what it computes.
WATCH_ONLY = {"train.progress", "train.threads", "train.stop_after", "train.tensorboard", "train.log_every",
              "train.report_to", "train.run_name", "train.push_to_hub", "train.hub_model_id", "train.hub_private_repo",
              "train.keep_last", "train.save_every", "train.output_dir"}


def existing_run(out: Path) -> list[str]:
    """The run files `out` holds (empty when there is no run there)."""
    if not out.is_dir():
        return []
    return sorted(name for name in RUN_FILES if (out / name).exists()) + sorted(
        p.name for p in out.glob("generations*.jsonl") if p.name != "generations.jsonl")


def check_writable(out: Path, key: str = "train.output_dir") -> None:
    """`out` can hold a run: a folder (created if missing) this user may write in."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{key}: {out} is a file, not a folder; give a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{key}: cannot create {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{key}: {out} is not writable; choose another folder")


def refuse_existing(out: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """Checks (changes nothing) that a run may start in `out`; returns the old run's files `overwrite` replaces."""
    if resume and overwrite:
        raise UserError("--resume continues the run in train.output_dir and --overwrite replaces it; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"train.output_dir: {out} is a file, not a folder; give a folder for the run")
    found = [] if resume else existing_run(out)
    if found and not overwrite:
        raise UserError(f"train.output_dir: {out} already holds a run ({', '.join(found)}); continue it with "
                        "--resume, replace it with --overwrite, or choose another --output-dir")
    return found


def prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Before a run: `out` is a writable folder; a fresh run (not `resume`) finds no other run there, or
    replaces it with `overwrite`."""
    found = refuse_existing(out, resume=resume, overwrite=overwrite)
    check_writable(out)
    for name in found:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def flatten(tree: dict) -> dict:
    return {f"{section}.{key}": value for section, body in tree.items() for key, value in (body or {}).items()}


def config_changes(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for every setting that would change a resumed run."""
    old, new = flatten(saved), flatten(current)
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in sorted(set(old) | set(new))
            if k not in WATCH_ONLY and old.get(k) != new.get(k)]


def resumable(out: Path, cfg) -> bool:
    """Whether `out` holds a complete checkpoint of a run with `cfg`'s settings, for a caller that owns the
    folder (a sweep cell, a benchmark run) and would rather continue a killed run than train it again; a run
    of other settings (an older version's defaults) is not resumable, and the caller replaces it."""
    import logging

    from robalign import checkpoint
    from robalign.config import normalized

    if not checkpoint.list_checkpoints(out / "checkpoints"):
        return False
    try:
        check_resume_config(out, cfg.to_dict(), normalize=normalized)
    except UserError as err:
        logging.getLogger(__name__).warning("%s: not resumed (%s); training it again", out,
                                            str(err).splitlines()[0])
        return False
    return True


def check_resume_config(out: Path, current: dict, normalize=None) -> None:
    """Refuses to resume a run with settings other than those in its config.yaml.

    `normalize(saved) -> dict` rewrites the saved settings as `current` is written (an older version wrote the
    same settings in another layout)."""
    path = out / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the run's settings ({err}); restore it or start anew with "
                        "--overwrite") from None
    if normalize is not None:
        saved = normalize(saved)
    changes = config_changes(saved, current)
    if changes:
        raise UserError(f"--resume: these settings differ from the run's {path}: " + "; ".join(changes) +
                        ". A resumed run continues with its own settings; to stop early and continue later use "
                        "train.stop_after, to train with these settings start a new run (another --output-dir)")


class RunLock:
    """`<out>/.run.lock` holding this process's id while it trains there; a live holder refuses a second run.

    A lock left by a process that no longer runs (killed) is taken over.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / ".run.lock"
        self.held = False

    def acquire(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _holder(self.path)
                if holder is not None:
                    raise UserError(f"train.output_dir: another process (pid {holder}) is training in "
                                    f"{self.path.parent}; wait for it or choose another --output-dir") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return self
        raise UserError(f"train.output_dir: cannot take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _holder(lock: Path) -> int | None:
    """The live process holding `lock`, or None when it is stale."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text().strip() or "0")
        if pid == os.getpid():
            return pid
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
    return None
