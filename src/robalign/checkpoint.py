"""Atomic checkpoints: trainable weights, optimiser, scheduler, RNG and data position, all safetensors/JSON.

A checkpoint is written into `checkpoints/.tmp-step-N`, every file fsynced, then renamed to
`checkpoints/step-N` and the directory fsynced. Rename is atomic, so a crash leaves either the old set
of checkpoints or the new one, never a half-written `step-N`; temporary leftovers are ignored and cleaned.
Nothing is unpickled on resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robalign import atomic
from robalign.errors import UserError

_STEP = re.compile(r"^step-(\d+)$")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    """Splits an optimiser state into tensors (for safetensors) and JSON (scalars, param groups)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors: dict, meta: dict):
    state: dict = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _tuplify(obj):
    return tuple(_tuplify(o) for o in obj) if isinstance(obj, list) else obj


def set_rng_state(tensors: dict, meta: dict):
    torch.set_rng_state(tensors["torch"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"cuda{i}" in tensors:
            torch.cuda.set_rng_state(tensors[f"cuda{i}"], i)
    random.setstate(_tuplify(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def _write_json(path: Path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(root: Path, step: int, *, model, optimizer, scheduler, state: dict,
                    keep_last: int, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes `root/step-{step}` atomically and prunes all but the newest `keep_last`.

    `state` goes to state.json; `tensors` (trainer state too large for JSON, e.g. a per-pair table) to
    state.safetensors, and comes back as `state["tensors"]` from `load_latest`/`load_checkpoint`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    try:
        # `.tmp-*` names: remove_partial deletes what a killed write left, list_checkpoints never sees it.
        with atomic.directory(final, tmp=root / f".tmp-step-{step:08d}", durable=True) as tmp:
            _write_into(tmp, step, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                        tensors=tensors)
    except (OSError, SafetensorError) as err:  # e.g. a full disk: the previous checkpoints are untouched
        last = list_checkpoints(root)
        raise UserError(f"checkpoint: cannot write {final} ({getattr(err, 'strerror', None) or err}); the last complete checkpoint, "
                        f"{last[-1] if last else 'none'}, is intact: free space and continue with --resume") from None
    for old in list_checkpoints(root)[:-keep_last]:
        atomic.remove_directory(old, root / f".tmp-del-{old.name}")
    return final


def _write_into(tmp: Path, step: int, *, model, optimizer, scheduler, state: dict, tensors: dict | None) -> None:
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_file(trainable_state(model), str(tmp / "weights.safetensors"))
    save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    names = ["weights", "optimizer", "rng"]
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        names.append("state")
    for name in names:
        with open(tmp / f"{name}.safetensors", "rb") as fh:
            os.fsync(fh.fileno())
    _write_json(tmp / "state.json", {"step": step, "optimizer": opt_meta, "rng": rng_meta,
                                     "scheduler": scheduler.state_dict(), **state})
    atomic.fsync_dir(tmp)


def remove_partial(root: Path):
    """Deletes temporary directories left by a checkpoint write that was killed."""
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never returned)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name))
             and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def load_latest(root: Path, *, model, optimizer, scheduler) -> tuple[Path, dict] | None:
    """Restores the newest checkpoint under `root` that reads back whole; a truncated or corrupt one (a disk
    fault, a copy cut short) is named in a warning and the one before it is used. None when there is none;
    a UserError when none of them reads."""
    import logging

    found = list_checkpoints(root)
    bad = []
    for path in reversed(found):
        # Every component is read before anything is restored, so a corrupt file never half-loads.
        try:
            parts = _read(path)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            bad.append(f"{path.name} ({why})")
            logging.getLogger(__name__).warning("--resume: checkpoint %s is truncated or corrupt (%s); trying the "
                                                "one before it", path, why)
            continue
        return path, _restore(path, parts, model=model, optimizer=optimizer, scheduler=scheduler)
    if bad:
        raise UserError(f"--resume: no checkpoint in {root} reads back whole: {'; '.join(bad)}; start the run "
                        "again with --overwrite")
    return None


def _read(path: Path) -> dict:
    state = json.loads((path / "state.json").read_text())
    extra = path / "state.safetensors"  # absent in checkpoints written without tensors (and before they existed)
    state["tensors"] = load_file(str(extra)) if extra.is_file() else {}
    return {"state": state, "weights": load_file(str(path / "weights.safetensors")),
            "optimizer": load_file(str(path / "optimizer.safetensors")),
            "rng": load_file(str(path / "rng.safetensors"))}


def _restore(path: Path, parts: dict, *, model, optimizer, scheduler) -> dict:
    state, weights = parts["state"], parts["weights"]
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"{path}: checkpoint holds weights this model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt = dict(parts["optimizer"])
    opt.pop("_empty", None)
    _load_optimizer(optimizer, opt, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(parts["rng"], state["rng"])
    return state


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> dict:
    """Restores weights, optimiser, scheduler and RNG in place; returns the saved trainer state."""
    return _restore(path, _read(path), model=model, optimizer=optimizer, scheduler=scheduler)
