"""The model card written into `final/` (and `final/adapter/`): what was trained, how, on what, and how well.

Replaces PEFT's empty template, and names the base model by its hub id so an adapter loads anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

# name -> (objective per pair, source)
METHODS = {
    "dpo": ("softplus(−β h)", "Rafailov et al. 2023, arXiv 2305.18290"),
    "ipo": ("(h − 1/(2β))²", "Azar et al. 2023, arXiv 2310.12036"),
    "hinge": ("max(0, 1 − β h)", "Zhao et al. 2023 (SLiC), arXiv 2305.10425"),
    "cdpo": ("(1−ε) softplus(−β h) + ε softplus(β h)", "Mitchell 2023, a note on DPO with noisy preferences"),
    "rdpo": ("[(1−ε) softplus(−β h) − ε softplus(β h)] / (1 − 2ε)", "Chowdhury, Kini, Natarajan 2024, arXiv 2403.00409"),
    "simpo": ("softplus(−(β M − γ)), no reference", "Meng, Xia, Chen 2024, arXiv 2405.14734"),
    "hypo": ("softplus(−β (Δθ − max(0, Δref)))", "reference-mismatch correction"),
    "sympo": ("symmetric ramp clip(0.5 − 0.5 β h, 0, 1) or σ(−β h)", "symmetric (noise-tolerant) losses"),
    "drdpo": ("−β′ log mean_i exp(−ℓ_i^DPO / β′) over the batch", "Wu et al. 2024, arXiv 2407.07880"),
    "oracle_robust_offline": ("softplus(−β h) + ρ β |h|", "Li, Gaur, Aggarwal 2026, arXiv 2602.20457"),
    "gapo": ("softplus(−(β Γ − γ)), Γ = m(θ) − stopgrad m(θ + δ_ASAM)", "Cho, Kim, Kim 2026, arXiv 2602.04909"),
    "sail": ("DPO on pairs sampled from the policy (DP / PP / PR routes)", "Ding et al. 2024, arXiv 2406.15567"),
    "oracle_robust": ("SAIL loss + ρ β E|h|, R-SCGD", "Li, Gaur, Aggarwal 2026, arXiv 2602.20457"),
}

# Built-in names -> the hub id of the same weights.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def base_model_id(name: str) -> str:
    """What an adapter should name as its base: the hub id of a built-in model, else what the user gave."""
    return HUB_IDS.get(name, name)


def write(folder: Path, cfg, final: dict, *, base: str, adapter: bool = False) -> Path:
    """Writes `folder/README.md` for a run of `cfg` with its final held-out metrics."""
    from robalign import __version__

    method = cfg.method.name
    formula, source = METHODS.get(method, ("", ""))
    settings = cfg.to_dict()
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items() if isinstance(v, (int, float)))
    front = ["---", f"base_model: {base}", "library_name: " + ("peft" if adapter else "transformers"),
             "tags:", "- robalign", f"- {method}", "- preference-alignment", "---", ""]
    body = [
        f"# {method} on {base}" + (" (LoRA adapter)" if adapter else ""),
        "",
        f"Trained with robalign {__version__}: `{method}`" + (f", per pair {formula}" if formula else "") + ".",
        (f"Source: {source}." if source else ""),
        "",
        "## Data",
        f"- training: `{cfg.data.train or '(given in Python)'}`; held-out: `{cfg.data.eval or 'split off the training data'}`"
        f" (fraction {cfg.data.eval_fraction}), max_length {cfg.data.max_length}",
        "- held-out pairs that carry `is_flipped` were scored with their true label",
        "",
        "## Final held-out metrics",
        "| metric | value |", "|---|---|", metrics or "| (none) | |",
        "",
        "## Settings",
        "```json", json.dumps(settings, indent=1, default=str), "```",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    path.write_text("\n".join(front + [line for line in body if line is not None]) + "\n")
    return path
