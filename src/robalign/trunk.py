"""The frozen trunk computed once: hidden states entering block L−k, cached per token sequence.

With only the last k blocks trainable (`model.train_last_k`) and dropout off, the embeddings and the
first L−k blocks compute the same function at every step, so their output for a pair never changes.
`TrunkCache` computes it once per pair and later forwards run only the last k blocks, the final norm and
the LM head (`robalign.logprobs` does so whenever a batch carries `TrunkStates`).

What is stored, and why it is shared by noisy and clean copies of a dataset: in the shared-prompt layout
(`robalign.data.collate`) a prompt's states depend on the prompt only, and a completion's states on the
prompt and that completion only (rejected tokens never attend to chosen ones). So the cache holds one
entry per prompt and one per (prompt, completion), keyed by their token ids; flipping a label swaps which
completion entry is read as "chosen", and nothing is recomputed. Alongside each completion it keeps the
reference model's summed log-prob of that completion (computed from the same states through the
reference's last blocks), so the reference costs nothing per step either.

On disk (`model.trunk_cache: disk`) entries live under one folder per (base model weights, split block,
dtype): shards of safetensors written atomically, each adding the sequences earlier runs lacked, so every
cell of a sweep over the same texts (any method, noise kind or rate, seed) reads what the first computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robalign.atomic import write_tensors
from robalign.blocks import decoder_layers, device_of, only_blocks
from robalign.data.collate import PreferenceBatch, collate
from robalign.data.tokenize import TokenizedPair
from robalign.errors import UserError
from robalign.logprobs import packed_mask, split_body_and_head
from robalign.pair_logps import PairLogps
from robalign.precision import FP32_TAG, check_recorded_precision
from robalign.reference import evaluating

log = logging.getLogger(__name__)


@dataclass
class TrunkStates:
    """A batch's cached trunk output, laid out like its `SharedPromptPack`.

    Attributes:
        hidden: [R, L, H] the states entering block `start` at every packed position (zeros at padding,
            which no real query attends to).
        start: index of the first block the forward still runs (L − k).
        ref_chosen, ref_rejected: [B] the reference's summed completion log-probs, or None unless stored for
            every pair of the batch (the training pairs of a reference-based method).
    """

    hidden: torch.Tensor
    start: int
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def to(self, device) -> TrunkStates:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return TrunkStates(self.hidden.to(device), self.start, move(self.ref_chosen), move(self.ref_rejected))


def _key(*parts: list[int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for ids in parts:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def pair_keys(pair: TokenizedPair) -> tuple[str, str, str]:
    """(prompt, prompt+chosen, prompt+rejected) keys of a pair."""
    return (_key(pair.prompt_ids), _key(pair.prompt_ids, pair.chosen_ids), _key(pair.prompt_ids, pair.rejected_ids))


def model_fingerprint(name: str, model, start: int) -> str:
    """Hash of the base model's name, every weight, the split block and the dtype (before any adapter)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{name}|{start}".encode())
    with torch.no_grad():
        for pname, p in sorted(model.state_dict().items()):
            h.update(f"{pname}|{p.dtype}|{tuple(p.shape)}".encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().data)
    return h.hexdigest()


def split_index(model, train_last_k: int) -> int:
    """L − k: the first trainable block (0 = the whole model trains)."""
    n = len(decoder_layers(split_body_and_head(model)[0]))
    if train_last_k > n:
        raise UserError(f"model.train_last_k: {train_last_k} is more than this model's {n} transformer blocks")
    return n - train_last_k if train_last_k else 0


class TrunkCache:
    """Trunk states (and reference log-probs) by token sequence, in memory and optionally on disk.

    Args:
        start: the first block that still runs (L − k); the cache holds the states entering it.
        directory: a folder for this base model (`model_fingerprint`), or None to keep it in memory only.
        precision: how the states and reference log-probs are computed (`robalign.precision.precision_tag`),
            written with every shard; a shard recording another precision is refused.
    """

    def __init__(self, start: int, directory: Path | None = None, precision: str = FP32_TAG):
        if start < 1:
            raise UserError("model.trunk_cache needs a frozen trunk: set model.train_last_k to fewer blocks "
                            "than the model has (e.g. 2)")
        self.start, self.directory, self.precision = start, directory, precision
        self.states: dict[str, torch.Tensor] = {}
        self.ref: dict[str, float] = {}
        self.new_states: dict[str, torch.Tensor] = {}
        self.new_ref: dict[str, float] = {}
        if directory is not None:
            self._read_shards()

    # --------------------------------------------------------------------------- disk
    def _read_shards(self):
        from safetensors import safe_open

        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as fh:
                    meta = fh.metadata()
                    index = json.loads(meta["index"])
                    table = fh.get_tensor("states")
            except Exception as err:  # a damaged shard is skipped; its sequences are computed again
                log.warning("trunk cache: cannot read %s (%s); ignoring it", shard, err)
                continue
            check_recorded_precision(meta.get("precision"), self.precision, f"the trunk cache shard {shard}")
            for key, (offset, length, ref) in index.items():
                if length:
                    self.states.setdefault(key, table[offset:offset + length])
                if ref is not None:
                    self.ref.setdefault(key, ref)

    def save(self) -> Path | None:
        """Writes what this process computed as one new shard (atomically); returns its path."""
        if self.directory is None or not (self.new_states or self.new_ref):
            return None
        keys = sorted(set(self.new_states) | set(self.new_ref))
        index, pieces, offset = {}, [], 0
        for key in keys:
            st = self.new_states.get(key)
            length = 0 if st is None else st.shape[0]
            index[key] = [offset, length, self.new_ref.get(key)]
            if st is not None:
                pieces.append(st)
            offset += length
        some = next(iter(self.states.values()))
        table = torch.cat(pieces) if pieces else torch.zeros((0, some.shape[1]), dtype=some.dtype)
        name = hashlib.blake2b("".join(keys).encode(), digest_size=8).hexdigest()
        path = self.directory / f"shard-{name}-{os.getpid()}.safetensors"
        try:
            write_tensors({"states": table}, path, metadata={"index": json.dumps(index), "precision": self.precision})
        except OSError as err:
            raise UserError(f"model.trunk_cache_dir: cannot write {path}: {err.strerror or err}") from None
        self.new_states, self.new_ref = {}, {}
        return path

    # --------------------------------------------------------------------------- filling
    def missing_states(self, pairs: list[TokenizedPair]) -> list[TokenizedPair]:
        return [p for p in pairs if not all(k in self.states for k in pair_keys(p))]

    def missing_ref(self, pairs: list[TokenizedPair]) -> list[TokenizedPair]:
        return [p for p in pairs if not all(k in self.ref for k in pair_keys(p)[1:])]

    @torch.no_grad()
    def fill_states(self, model, pairs: list[TokenizedPair], *, pad_id: int, batch_size: int = 8,
                    progress=None) -> int:
        """Runs the trunk (embeddings and blocks below `start`) over the pairs not yet cached; returns how many."""
        todo = self.missing_states(pairs)
        body, _ = split_body_and_head(model)
        with evaluating(model):
            for group in _length_groups(todo, batch_size):
                batch = collate(group, pad_id).to(device_of(model))
                pack = batch.packed
                with only_blocks(body, 0, self.start, norm=False):
                    out = body(input_ids=pack.input_ids, attention_mask=packed_mask(body, pack.attention),
                               position_ids=pack.position_ids, use_cache=False).last_hidden_state
                for p, (row, begin) in zip(group, _placements(group)):
                    n_p, n_c, n_r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
                    seq = out[row, begin:begin + n_p + n_c + n_r].cpu()
                    kp, kc, kr = pair_keys(p)
                    for key, piece in ((kp, seq[:n_p]), (kc, seq[n_p:n_p + n_c]), (kr, seq[n_p + n_c:])):
                        if key not in self.states:
                            self.states[key] = self.new_states[key] = piece.clone()
                if progress:
                    progress(len(group))
        return len(todo)

    @torch.no_grad()
    def fill_reference(self, reference, pairs: list[TokenizedPair], *, pad_id: int, device, batch_size: int = 8,
                       progress=None) -> int:
        """Stores `reference.logps` of every completion not yet stored, computed on cached trunk states."""
        todo = self.missing_ref(pairs)
        for group in _length_groups(todo, batch_size):
            batch = self.attach(collate(group, pad_id), group, with_ref=False).to(device)
            out = reference.logps(batch)
            for p, c, r in zip(group, out.chosen.tolist(), out.rejected.tolist()):
                _, kc, kr = pair_keys(p)
                for key, value in ((kc, c), (kr, r)):
                    if key not in self.ref:
                        self.ref[key] = self.new_ref[key] = value
            if progress:
                progress(len(group))
        return len(todo)

    # --------------------------------------------------------------------------- reading
    def attach(self, batch: PreferenceBatch, pairs: list[TokenizedPair], *, with_ref: bool = True) -> PreferenceBatch:
        """`batch` (collated from `pairs`, in that order) with its `TrunkStates`."""
        pack = batch.packed
        if pack is None:
            raise ValueError("the trunk cache needs the shared-prompt layout (collate(..., shared_prompt=True))")
        rows, width = pack.input_ids.shape
        first = self.states[pair_keys(pairs[0])[0]]
        hidden = torch.zeros((rows, width, first.shape[1]), dtype=first.dtype)
        for p, (row, begin) in zip(pairs, _placements(pairs)):
            at = begin
            for key in pair_keys(p):
                piece = self.states[key]
                hidden[row, at:at + piece.shape[0]] = piece
                at += piece.shape[0]
        ref_c = ref_r = None
        keys = [pair_keys(p) for p in pairs]
        if with_ref and all(k[1] in self.ref and k[2] in self.ref for k in keys):
            ref_c = torch.tensor([self.ref[k[1]] for k in keys], dtype=torch.float32)
            ref_r = torch.tensor([self.ref[k[2]] for k in keys], dtype=torch.float32)
        batch.trunk = TrunkStates(hidden, self.start, ref_c, ref_r)
        return batch

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())


def _placements(pairs: list[TokenizedPair]) -> list[tuple[int, int]]:
    """(row, first column) of each pair in its `SharedPromptPack`, as `pack_shared_prompt` lays them out."""
    from robalign.data.collate import pack_rows

    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    where = [(0, 0)] * len(pairs)
    for row, members in enumerate(pack_rows(lengths)):
        begin = 0
        for i in members:
            where[i] = (row, begin)
            begin += lengths[i]
    return where


def _length_groups(pairs: list[TokenizedPair], size: int):
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    for s in range(0, len(order), size):
        yield [pairs[i] for i in order[s:s + size]]


class StoredReference:
    """Reference log-probs read from the batch's `TrunkStates` (filled by `TrunkCache.fill_reference`)."""

    def logps(self, batch: PreferenceBatch) -> PairLogps:
        t = batch.trunk
        if t is None or t.ref_chosen is None:
            raise RuntimeError("StoredReference: the batch carries no stored reference log-probs")
        lengths = batch.completion_mask.sum(dim=1).to(t.ref_chosen.dtype)
        b = batch.num_pairs
        return PairLogps(t.ref_chosen, t.ref_rejected, lengths[:b], lengths[b:])


@torch.no_grad()
def check_split(model, batch: PreferenceBatch, rtol: float = 1e-4) -> None:
    """Refuses a model whose forward from cached trunk states differs from its full forward.

    The top-only forward feeds the states as `inputs_embeds`; a model that rescales or otherwise transforms
    them before its first block would silently train on something else.
    """
    from robalign.logprobs import sequence_logps

    with evaluating(model):
        cached = sequence_logps(model, batch)
        trunk, batch.trunk = batch.trunk, None
        try:
            full = sequence_logps(model, batch)
        finally:
            batch.trunk = trunk
    got = torch.cat([cached.chosen, cached.rejected])
    want = torch.cat([full.chosen, full.rejected])
    err = float((got - want).abs().max())
    scale = float(want.abs().max()) + 1.0
    if not err <= rtol * scale:
        raise UserError(f"model.trunk_cache: this model's forward from cached trunk states differs from its full "
                        f"forward (max |Δ log-prob| {err:.3g}); it transforms its block inputs in a way the cache "
                        "cannot replay. Set model.trunk_cache: off")
