"""The one batch layout every method consumes, and the seeded, length-bucketed batch order.

A batch of B pairs is 2B right-padded rows: rows 0..B-1 are prompt+chosen, rows B..2B-1 are
prompt+rejected, so chosen and rejected go through the model in one forward. Two pairs, prompt ids
`p`, completion ids `c`/`r`, pad `_` (T = 5, the longest row)::

    input_ids        attention_mask   completion_mask
    p1 p1 c1 c1 c1     1 1 1 1 1        0 0 1 1 1        <- pair 1, chosen
    p2 c2 c2 _  _      1 1 1 0 0        0 1 1 0 0        <- pair 2, chosen
    p1 p1 r1 _  _      1 1 1 0 0        0 0 1 0 0        <- pair 1, rejected
    p2 r2 r2 r2 r2     1 1 1 1 1        0 1 1 1 1        <- pair 2, rejected

`completion_mask[i, t]` marks the tokens whose log-probs are scored (the model predicts token t from
position t-1). Padding is kept small by sorting pairs of similar length into the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robalign.data.tokenize import TokenizedPair


@dataclass
class PreferenceBatch:
    """Tensors of B pairs in the layout above.

    Attributes:
        input_ids: [2B, T] long.
        attention_mask: [2B, T] long, 1 on real tokens.
        completion_mask: [2B, T] bool, True on completion tokens.
        index: [B] long, dataset positions (reference-cache keys).
        is_flipped: [B] float, 1 flipped / 0 clean / NaN unknown.
        ids: B pair ids.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    index: torch.Tensor
    is_flipped: torch.Tensor
    ids: list[str]

    @property
    def num_pairs(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.attention_mask.sum()

    def to(self, device) -> PreferenceBatch:
        move = {k: getattr(self, k).to(device) for k in ("input_ids", "attention_mask", "completion_mask",
                                                          "index", "is_flipped")}
        return PreferenceBatch(**move, ids=self.ids)


def collate(pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, comp) in enumerate(rows):
        n = len(prompt) + len(comp)
        input_ids[i, :n] = torch.tensor(prompt + comp)
        attention[i, :n] = 1
        completion[i, len(prompt):n] = True
    flipped = [float("nan") if p.is_flipped is None else float(p.is_flipped) for p in pairs]
    return PreferenceBatch(input_ids, attention, completion, torch.tensor([p.index for p in pairs]),
                           torch.tensor(flipped), [p.id for p in pairs])


def epoch_batches(lengths: list[int], batch_size: int, *, seed: int, epoch: int,
                  bucket_batches: int = 32) -> list[list[int]]:
    """Batch order of one epoch: indices shuffled by (seed, epoch), sorted by length inside windows of
    `bucket_batches` batches (so batches hold similar lengths), then the batch order shuffled again.
    Incomplete trailing batches are dropped so every optimiser step sees the same number of pairs.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * max(1, bucket_batches)
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk) - batch_size + 1, batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[k] for k in perm]


class BatchStream:
    """Global micro-batches in a deterministic order, addressable by position (for exact resume).

    Each global micro-batch holds `batch_size * world_size` pairs; rank r takes the r-th slice, so N
    processes see exactly the pairs one process would see at the same global batch.
    """

    def __init__(self, pairs: list[TokenizedPair], batch_size: int, *, seed: int, pad_id: int,
                 world_size: int = 1, rank: int = 0):
        self.pairs, self.pad_id = pairs, pad_id
        self.local, self.world, self.rank, self.seed = batch_size, world_size, rank, seed
        self.lengths = [len(p) for p in pairs]
        self._epoch, self._order = -1, []
        if len(pairs) < batch_size * world_size:
            from robalign.errors import UserError

            raise UserError(f"data: {len(pairs)} training pairs are fewer than one global batch "
                            f"({batch_size} x {world_size} processes); lower train.batch_size")

    def batch(self, position: int) -> PreferenceBatch:
        """The local slice of global micro-batch number `position` (counting across epochs)."""
        per_epoch = len(self.pairs) // (self.local * self.world)
        epoch, k = divmod(position, per_epoch)
        if epoch != self._epoch:
            self._order = epoch_batches(self.lengths, self.local * self.world, seed=self.seed, epoch=epoch)
            self._epoch = epoch
        chosen = self._order[k]
        mine = chosen[self.rank * self.local:(self.rank + 1) * self.local]
        return collate([self.pairs[i] for i in mine], self.pad_id)
