"""Where reference log-probs come from: a frozen copy, the policy with adapters off, or a disk cache.

All providers answer `logps(batch) -> PairLogps` without gradient. Reference-free methods get
`NoReference`, a null object, so the training step never branches on the method's name.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from robalign.atomic import write_tensors
from robalign.data.collate import PreferenceBatch, collate
from robalign.logprobs import sequence_logps
from robalign.pair_logps import PairLogps
from robalign.precision import FP32_TAG, check_recorded_precision


@contextlib.contextmanager
def evaluating(model):
    """`model` in eval mode inside, back in the mode it had afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class NoReference:
    """For reference-free methods: loads nothing, computes nothing."""

    def logps(self, batch: PreferenceBatch) -> None:
        return None


class FrozenCopyReference:
    """A frozen deep copy of the initial policy (full fine-tuning)."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch) -> PairLogps:
        return sequence_logps(self.model, batch)


class InitialPolicyReference:
    """The policy itself, before its first update: the reference without a copy. Only valid until the
    optimiser steps (used to fill the trunk cache's reference log-probs at start-up)."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch) -> PairLogps:
        with evaluating(self.model):
            return sequence_logps(self.model, batch)


class AdapterDisabledReference:
    """The LoRA policy with its adapters switched off: the base model, at no extra memory."""

    def __init__(self, peft_model):
        self.model = peft_model

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch) -> PairLogps:
        with evaluating(self.model), self.model.disable_adapter():
            return sequence_logps(self.model, batch)


class MemoizedReference:
    """Another provider's log-probs, remembered by the batch's content in `memo`.

    The same tokens give the same reference log-probs, so trainers of one base model that meet the same
    batch (e.g. the methods of one sweep cell, which share data, noise and seed) compute it once. The key
    also holds the thread count: a CPU forward with another count may differ in the last bits, and a
    memoised value must be exactly what this process would compute.

    Args:
        inner: the provider that computes a batch not seen yet.
        memo: a mapping from key to `PairLogps` (a dict, or a `DiskMemo` to share between processes).
            Only valid for one base model: every provider using it must compute the same function.
        precision: how `inner` computes (`robalign.precision.precision_tag`); part of the key, so runs in
            another precision never read these values.
    """

    def __init__(self, inner, memo, precision: str = FP32_TAG):
        self.inner, self.memo, self.precision = inner, memo, precision
        self.hits = self.misses = 0

    @torch.no_grad()
    def logps(self, batch: PreferenceBatch) -> PairLogps:
        key = batch_key(batch, self.precision)
        found = self.memo.get(key)
        if found is not None:
            self.hits += 1
            return _moved(found, batch.input_ids.device)
        self.misses += 1
        out = self.inner.logps(batch)
        self.memo[key] = _moved(out, "cpu")
        return out


def _moved(lp: PairLogps, device) -> PairLogps:
    return lp.detach().to(device)


def batch_key(batch: PreferenceBatch, precision: str = FP32_TAG) -> str:
    """Hash of everything a reference forward of `batch` reads, plus the thread count and the precision."""
    head = f"{torch.get_num_threads()}|{batch.packed is None}|{batch.input_ids.device.type}"
    if precision != FP32_TAG:  # fp32 keys stay those of memos written before precision was recorded
        head += f"|{precision}"
    h = hashlib.sha256(head.encode())
    for t in (batch.input_ids, batch.attention_mask, batch.completion_mask):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class DiskMemo:
    """A `MemoizedReference` memo in a directory (one small safetensors file per batch), shared by the
    processes that use it; each entry is written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def get(self, key: str) -> PairLogps | None:
        path = self.directory / f"{key}.safetensors"
        if not path.is_file():
            return None
        table = load_file(path)
        return PairLogps(table["chosen"], table["rejected"], table["chosen_lengths"], table["rejected_lengths"])

    def __setitem__(self, key: str, value: PairLogps):
        write_tensors({name: getattr(value, name).contiguous() for name in
                          ("chosen", "rejected", "chosen_lengths", "rejected_lengths")},
                         self.directory / f"{key}.safetensors")


class CachedReference:
    """Precomputed reference log-probs, looked up by the pairs' dataset positions."""

    def __init__(self, chosen: torch.Tensor, rejected: torch.Tensor):
        self.chosen, self.rejected = chosen, rejected

    def logps(self, batch: PreferenceBatch) -> PairLogps:
        idx = batch.index.cpu()
        lengths = batch.completion_mask.sum(dim=1).float()
        b = batch.num_pairs
        dev = batch.input_ids.device
        return PairLogps(self.chosen[idx].to(dev), self.rejected[idx].to(dev), lengths[:b], lengths[b:])


def cache_key(model_id: str, model, pairs, settings: dict) -> str:
    """Hash of the model (name and weights), the tokenised data and the tokenisation settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_id, **settings}, sort_keys=True).encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().flatten()[:: max(1, p.numel() // 4096)].numpy().tobytes())
    for p in pairs:
        h.update(json.dumps([p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()[:24]


def reference_logps(provider, pairs, *, pad_id: int, batch_size: int = 8, size: int = 0,
                    progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected) of tokenised `pairs` under `provider`, indexed by each
    pair's dataset position (`size` entries at least; NaN where no pair sits). Batches group pairs of
    similar length, so little of each forward is padding."""
    size = max(size, max(p.index for p in pairs) + 1)
    chosen = torch.full((size,), float("nan"))
    rejected = torch.full((size,), float("nan"))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    for start in range(0, len(order), batch_size):
        group = [pairs[i] for i in order[start:start + batch_size]]
        out = provider.logps(collate(group, pad_id))
        idx = torch.tensor([p.index for p in group])
        chosen[idx], rejected[idx] = out.chosen.float().cpu(), out.rejected.float().cpu()
        if progress:
            progress(len(group))
    return chosen, rejected


def build_cached_reference(provider, pairs, *, path: Path, pad_id: int, batch_size: int = 8,
                           progress=None, precision: str = FP32_TAG) -> CachedReference:
    """Computes (or reads) the reference log-probs of `pairs`, stored in `path` (safetensors) with the
    `precision` they were computed in; a file recording another precision is refused."""
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("precision")
        check_recorded_precision(recorded, precision, f"the cached reference log-probs {path} (model.reference: "
                                 "cached)")
        table = load_file(path)
        return CachedReference(table["chosen"], table["rejected"])
    chosen, rejected = reference_logps(provider, pairs, pad_id=pad_id, batch_size=batch_size, progress=progress)
    write_tensors({"chosen": chosen, "rejected": rejected}, path, metadata={"precision": precision})
    return CachedReference(chosen, rejected)


@dataclass
class SharedReference:
    """Reference log-probs that trainers of one base model share (the cells of a sweep, the runs of the demo),
    so that what one of them computed, the others read.

    Attributes:
        heldout: the held-out pairs' reference log-probs, by pair content (`PreferenceEvaluator`'s
            reference_cache); filled by the first trainer that evaluates a split.
        batches: the training (and held-out) batches' reference log-probs, by batch content
            (`MemoizedReference`'s memo): a dict, a `DiskMemo` shared with other processes, or None (not kept).
    Only valid while every trainer given it has the same base model.
    """

    heldout: dict = field(default_factory=dict)
    batches: dict | DiskMemo | None = None
