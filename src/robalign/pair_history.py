"""Each training pair's margin in every epoch, taken from the training steps' own margins (no extra pass).

Why: how a pair's margin evolves over the epochs is the signal that training-dynamics methods use to find
mislabelled examples. A pair whose observed label the model comes to prefer only late, by memorising it,
has a low area under its margin curve (AUM, Pleiss et al. 2020, arXiv 2001.10528); a clean pair is preferred
early. Keeping the history lets that signal be measured against the known flips of a noise study, and
computed on a user's own data, without retraining.

The table is written beside the held-out margins as `train_margins.safetensors`:
- ``margin`` [E, N]: the margin (method's own, e.g. DPO's h) of training pair n when the model met it in epoch
  e (0-based; the mean if it met it more than once), NaN where it has not met it in that epoch (yet);
- ``is_flipped`` [N]: 1 flipped, 0 clean, NaN unknown.
Columns are the positions of the training data as given to the trainer; a pair it skipped (too long) or
dropped (`data.keep_fraction`) keeps NaN margins.
"""

from __future__ import annotations

from pathlib import Path

import torch


class PairHistory:
    """Sums and counts of the margins met, per epoch; on the device of the margins until written."""

    def __init__(self, is_flipped: torch.Tensor):
        self.is_flipped = is_flipped.detach().float().cpu()
        self.n = len(self.is_flipped)
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, torch.Tensor] = {}

    def record(self, epoch: int, index: torch.Tensor, margin: torch.Tensor) -> None:
        """Adds the margins of the pairs at dataset positions `index`, met in `epoch`."""
        margin = margin.detach().float()
        if epoch not in self.sums:
            self.sums[epoch] = torch.zeros(self.n, device=margin.device)
            self.counts[epoch] = torch.zeros(self.n, device=margin.device)
        index = index.to(margin.device)
        self.sums[epoch].index_add_(0, index, margin)
        self.counts[epoch].index_add_(0, index, torch.ones_like(margin))

    def table(self, reduce=None) -> torch.Tensor:
        """[E, N] mean margin per epoch (NaN where not met); `reduce(t)` sums a tensor over processes (all
        processes call it for the same epochs, since they step together)."""
        epochs = range(max(self.sums) + 1) if self.sums else range(0)
        rows = []
        for e in epochs:
            sums = self.sums.get(e, torch.zeros(self.n))
            counts = self.counts.get(e, torch.zeros(self.n, device=sums.device))
            if reduce is not None:
                sums, counts = reduce(sums), reduce(counts)
            rows.append(torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan).cpu())
        return torch.stack(rows) if rows else torch.zeros(0, self.n)

    def save(self, path: Path, reduce=None) -> torch.Tensor:
        """Writes `path` atomically and returns the table. Under several processes every one must call it
        (for `reduce`); only the one given a `path` writes."""
        from robalign import atomic

        table = self.table(reduce)
        if path is not None and len(table):  # nothing met yet (an evaluation before the first step)
            atomic.write_tensors({"margin": table, "is_flipped": self.is_flipped}, path)
        return table

    def state(self, reduce=None) -> dict[str, torch.Tensor]:
        """Checkpointable tensors (`sums/E`, `counts/E` per epoch E met so far), summed over processes with
        `reduce` (every process must call it then). Tensors, not JSON lists: at 10⁵ pairs × 10 epochs a JSON
        table would be tens of MB of text per checkpoint."""
        reduce = reduce or (lambda t: t)
        out = {}
        for e in sorted(self.sums):
            out[f"sums/{e}"] = reduce(self.sums[e]).float().cpu()
            out[f"counts/{e}"] = reduce(self.counts[e]).float().cpu()
        return out

    def load_state(self, state: dict | None) -> None:
        """Restores `state()`; also reads the {epoch: [sums, counts]} JSON lists older checkpoints hold."""
        self.sums, self.counts = {}, {}
        for key, value in (state or {}).items():
            if isinstance(value, torch.Tensor):
                kind, e = key.split("/")
                (self.sums if kind == "sums" else self.counts)[int(e)] = value.float().clone()
            else:
                sums, counts = value
                self.sums[int(key)] = torch.tensor(sums, dtype=torch.float32)
                self.counts[int(key)] = torch.tensor(counts, dtype=torch.float32)


def flip_signals(margin: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair scores from an [E, N] margin table, higher = more likely flipped: minus the margin the model
    gave each pair in epoch 1 (before it had trained on it) and minus the area under the margin (AUM: the mean
    over the epochs the pair was met, Pleiss et al. 2020)."""
    return {"-margin, epoch 1": -margin[0], "-AUM": -margin.nanmean(0)}


def flip_aurocs(margin: torch.Tensor, is_flipped: torch.Tensor, scores: dict | None = None) -> dict[str, float]:
    """Flip AUROC of each score (default `flip_signals(margin)`) over the pairs that were trained on and whose
    flag is known (0.5 = chance; NaN when either class is empty)."""
    from robalign.losses.gapo import flip_auroc_ranked

    trained = ~margin.isnan().all(0)  # pairs dropped before training (data.keep_fraction) have no margin
    flags = torch.where(trained, is_flipped.double(), torch.nan)
    return {name: float(flip_auroc_ranked(score.nan_to_num(0.0), flags))
            for name, score in (scores if scores is not None else flip_signals(margin)).items()}
