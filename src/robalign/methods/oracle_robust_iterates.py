"""R-SCGD's iterates θ_t in a training run: the projection onto the ball around θ_ref, the iterates saved
to `iterates/`, which of them is the output (arXiv 2602.20457: θ_R with R uniform on {0, …, T−1}), and
writing that output as a model."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from robalign import atomic
from robalign.blocks import unwrap_policy
from robalign.checkpoint import trainable_state

ITERATES = "iterates"
_ITERATE = re.compile(r"^iterate-(\d+)\.safetensors$")


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in unwrap_policy(model).named_parameters() if p.requires_grad]


@torch.no_grad()
def project_weights_onto_ball(params: Sequence[torch.Tensor], centre: Sequence[torch.Tensor],
                              radius: float) -> tuple[bool, float]:
    """In place: θ ← c + (θ − c)·min(1, D/‖θ − c‖), one global norm over all tensors (R-SCGD's Proj_Θ, arXiv 2602.20457).

    The map of the exact engine's `robalign.loglinear.rscgd.projected_onto_ball`, on a model's weight
    tensors in place, the distance summed in float64 over them.

    Returns:
        (whether the projection moved θ, ‖θ − c‖ after it).
    """
    dist = math.sqrt(sum(float((p.double() - c.double()).pow(2).sum()) for p, c in zip(params, centre)))
    if dist <= radius:
        return False, dist
    scale = radius / dist
    for p, c in zip(params, centre):
        p.copy_(c + (p - c) * scale)
    return True, radius


def iterate_name(t: int) -> str:
    return f"iterate-{t:08d}.safetensors"


def list_iterates(folder: Path) -> list[tuple[int, Path]]:
    """Saved iterates (t, path), oldest first."""
    if folder is None or not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ITERATE.match(p.name))]
    return sorted(found)


def save_iterate(policy, folder: Path, t: int) -> None:
    """θ_t's trainable weights to `folder`/iterate-t (written whole or not at all)."""
    atomic.write_tensors(trainable_state(unwrap_policy(policy)), folder / iterate_name(t))


def choose_output(out: Path, rule: str, total: int, seed: int) -> tuple[dict, dict | None]:
    """(the record of output_iterate.json, the chosen iterate's weights or None for the last iterate).

    'random' draws one of the saved θ_t with t < T uniformly, seeded by `seed` alone (independent of the
    training RNG); without such an iterate, or with 'last', the output is the final weights.
    """
    choice: dict = {"output": rule, "steps": total}
    weights = None
    if rule == "random":
        candidates = [(t, p) for t, p in list_iterates(out / ITERATES) if t < total]
        if candidates:
            rng = torch.Generator().manual_seed(seed)
            pick = int(torch.randint(len(candidates), (1,), generator=rng))
            t, path = candidates[pick]
            weights = load_file(str(path))
            choice.update(step=t, iterate=str(path.relative_to(out)), candidates=[c for c, _ in candidates],
                          seed=seed, rule="uniform over the saved iterates with t < T")
        else:
            choice.update(output="last", note="no saved iterate with t < T; the last iterate is the output")
    if choice["output"] == "last":
        choice.update(step=total, model_dir="final")
    return choice, weights


def model_at(model, weights: dict | None):
    """A copy of `model` with its trainable weights set to `weights` (a saved iterate); None: as it is."""
    model = copy.deepcopy(model)
    if weights is not None:
        params = dict(trainable(model))
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
    return model


def save_output_model(model, target: Path, tokenizer=None) -> None:
    """The output as a loadable model in `target` (a LoRA model: merged, its adapter in `target`/adapter)."""
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(target / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
