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

The batch also keeps the `TokenizedPair`s it was collated from (`pairs`, in row order): the online
methods read their prompts there (pair i's prompt is `pairs[i].prompt_ids`, the ids of row i before
its first completion token) instead of taking the padded tensors apart again.

The log-prob engine does not run those 2B rows as they are: `SharedPromptPack` lays each pair out as
`prompt + chosen + rejected`, where rejected tokens take the positions right after the prompt and may
not attend to the chosen tokens, and puts short pairs side by side in one row (first-fit into rows as
wide as the longest pair). The prompt is encoded once instead of twice and little is padded, with the
same log-probs as the 2B-row layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from robalign.data.tokenize import TokenizedPair

if TYPE_CHECKING:
    from robalign.trunk import TrunkStates


@dataclass
class SharedPromptPack:
    """Pairs `prompt_i + chosen_i + rejected_i` laid end to end in R <= B rows of width L (the longest
    pair), right-padded, for one forward.

    Attributes:
        input_ids: [R, L] long.
        position_ids: [R, L] long; each pair starts at 0, its rejected tokens restart after the prompt.
        attention: [R, 1, L, L] bool, True where query q may attend to key k (causal within a pair,
            rejected tokens blind to chosen ones, pairs of one row blind to each other; a padding query
            sees only itself so no softmax row is empty).
        source_row, source_pos: [N] where the hidden state predicting each completion token sits.
        targets: [N] the completion token ids.
        seq_row: [N] the 2B-row index (chosen i -> i, rejected i -> B + i) each token's log-prob adds to.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention: torch.Tensor
    source_row: torch.Tensor
    source_pos: torch.Tensor
    targets: torch.Tensor
    seq_row: torch.Tensor

    def to(self, device) -> SharedPromptPack:
        return SharedPromptPack(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """Pair indices per row: first-fit decreasing into rows as wide as the longest pair, so short pairs
    share a row instead of each being padded to the longest (deterministic: ties keep input order)."""
    width = max(lengths)
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([]), room.append(width)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def pack_shared_prompt(pairs: list[TokenizedPair], pad_id: int) -> SharedPromptPack:
    b = len(pairs)
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    layout = pack_rows(lengths)
    width = max(lengths)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(layout), width), dtype=torch.long)
    att = torch.eye(width, dtype=torch.bool).repeat(len(layout), 1, 1, 1)
    src_row, src_pos, targets, seq_row = [], [], [], []
    for row, members in enumerate(layout):
        start = 0
        for i in members:
            p = pairs[i]
            n_p, n_c, n_r = len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
            end = start + lengths[i]
            ids[row, start:end] = torch.tensor(p.prompt_ids + p.chosen_ids + p.rejected_ids)
            pos[row, start:start + n_p + n_c] = torch.arange(n_p + n_c)
            pos[row, start + n_p + n_c:end] = torch.arange(n_p, n_p + n_r)
            causal = torch.ones(lengths[i], lengths[i], dtype=torch.bool).tril()
            causal[n_p + n_c:, n_p:n_p + n_c] = False  # rejected tokens never see the chosen answer
            att[row, 0, start:end, start:end] = causal  # and no pair sees another pair of its row
            # The last prompt state predicts the first token of both answers.
            src = [n_p - 1 + j for j in range(n_c)] + [n_p - 1] + [n_p + n_c + j for j in range(n_r - 1)]
            src_pos += [start + s for s in src]
            src_row += [row] * (n_c + n_r)
            targets += p.chosen_ids + p.rejected_ids
            seq_row += [i] * n_c + [b + i] * n_r
            start = end
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return SharedPromptPack(ids, pos, att, as_long(src_row), as_long(src_pos), as_long(targets), as_long(seq_row))


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
        packed: the same pairs as a `SharedPromptPack` (what the log-prob engine runs), or None to
            run the 2B rows directly.
        trunk: the cached output of the frozen blocks for `packed` (`robalign.trunk`), or None: then the
            log-prob engine runs only the blocks above it.
        pairs: the B `TokenizedPair`s the batch was collated from, in row order (plain ids on the CPU).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    index: torch.Tensor
    is_flipped: torch.Tensor
    ids: list[str]
    packed: SharedPromptPack | None = None
    trunk: TrunkStates | None = None
    pairs: list[TokenizedPair] | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.attention_mask.sum()

    def to(self, device) -> PreferenceBatch:
        move = {k: getattr(self, k).to(device) for k in ("input_ids", "attention_mask", "completion_mask",
                                                          "index", "is_flipped")}
        packed = None if self.packed is None else self.packed.to(device)
        trunk = None if self.trunk is None else self.trunk.to(device)
        return PreferenceBatch(**move, ids=self.ids, packed=packed, trunk=trunk, pairs=self.pairs)


def collate(pairs: list[TokenizedPair], pad_id: int, *, shared_prompt: bool = True) -> PreferenceBatch:
    """Builds the 2B-row batch (and, with `shared_prompt`, its packed form for the forward)."""
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
    packed = pack_shared_prompt(pairs, pad_id) if shared_prompt else None
    return PreferenceBatch(input_ids, attention, completion, torch.tensor([p.index for p in pairs]),
                           torch.tensor(flipped), [p.id for p in pairs], packed, pairs=list(pairs))


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
                 world_size: int = 1, rank: int = 0, trunk=None):
        self.pairs, self.pad_id, self.trunk = pairs, pad_id, trunk
        self.local, self.world, self.rank, self.seed = batch_size, world_size, rank, seed
        self.lengths = [len(p) for p in pairs]
        self._epoch, self._order = -1, []
        if len(pairs) < batch_size * world_size:
            from robalign.errors import UserError

            raise UserError(f"data: {len(pairs)} training pairs are fewer than one global batch "
                            f"({batch_size} x {world_size} processes); lower train.batch_size")

    def batch(self, position: int) -> PreferenceBatch:
        """The local slice of global micro-batch number `position` (counting across epochs)."""
        epoch, k = divmod(position, self.micro_batches_per_epoch)
        if epoch != self._epoch:
            self._order = epoch_batches(self.lengths, self.local * self.world, seed=self.seed, epoch=epoch)
            self._epoch = epoch
        chosen = self._order[k]
        mine = [self.pairs[i] for i in chosen[self.rank * self.local:(self.rank + 1) * self.local]]
        batch = collate(mine, self.pad_id)
        return batch if self.trunk is None else self.trunk.attach(batch, mine)

    @property
    def micro_batches_per_epoch(self) -> int:
        return len(self.pairs) // (self.local * self.world)
