"""GAPO under data parallelism: two gloo ranks with the all-reduced probe gradient share one anchor, so
their anchor gaps equal one process's gaps on the whole global micro-batch (SPEC §3 step 1, STYLE 7).

The ranks run a torch-only toy causal LM with the interface `robalign.logprobs` reads (a body returning
`last_hidden_state`, an output head), so each spawned process starts in about a second instead of
importing transformers; the all-reduce path under test does not depend on the architecture.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from robalign.data.collate import collate
from robalign.data.tokenize import TokenizedPair
from robalign.methods.gapo import GapoMethod, GapoParams

VOCAB, HIDDEN, PAD = 32, 16, 0


class _Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList([nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)])
        self.norm = nn.LayerNorm(HIDDEN)

    def forward(self, input_ids, attention_mask, use_cache=False):
        mask = attention_mask[..., None].float()
        h = self.embed(input_ids) * mask
        for layer in self.layers:  # causal: each position mixes the mean of the positions up to it
            context = h.cumsum(1) / mask.cumsum(1).clamp_min(1)
            h = h + torch.tanh(layer(context)) * mask
        return SimpleNamespace(last_hidden_state=self.norm(h))


class _ToyLM(nn.Module):
    base_model_prefix = "body"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = _Body(), nn.Linear(HIDDEN, VOCAB, bias=False)

    def get_output_embeddings(self):
        return self.head


def _pairs(n=8):
    gen = torch.Generator().manual_seed(1)

    def ids(k):
        return torch.randint(1, VOCAB, (k,), generator=gen).tolist()

    return [TokenizedPair(ids(3 + i % 3), ids(2 + i % 4), ids(4 - i % 3), f"p{i}", i) for i in range(n)]


def _gap(model, pairs):
    method = GapoMethod(GapoParams(radius=0.5))
    return method.anchor(model, collate(pairs, PAD, shared_prompt=False)).gap


def _rank(rank: int, world: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pairs = _pairs()
        local = len(pairs) // world
        torch.save(_gap(_ToyLM(), pairs[rank * local:(rank + 1) * local]), f"{out_dir}/gap{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # a whole sweep / demo / spawned processes
def test_two_ranks_share_one_anchor_and_match_one_process(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    split = torch.cat([torch.load(tmp_path / f"gap{r}.pt") for r in range(2)])
    model, pairs = _ToyLM(), _pairs()
    whole = _gap(model, pairs)
    assert whole.abs().min() > 1e-4
    assert torch.allclose(split, whole, atol=1e-5, rtol=0), (split, whole)
    # without the all-reduce each half would get its own anchor and different gaps
    alone = torch.cat([_gap(model, pairs[:4]), _gap(model, pairs[4:])])
    assert (alone - whole).abs().max() > 1e-4
