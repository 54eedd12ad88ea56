"""What GAPO's anchor gap is made of, pair by pair: its own gradient's term versus the rest of the batch.

    .venv/bin/python lab/scripts/gapo_gap_anatomy.py --seed 1 [--pairs 256] [--out outputs/hh-gapo/anatomy_s1.json]

Reads the trained model and the flipped training pairs of `lab/scripts/hh_gapo_check.py` (run that first).
To first order, with ũ_i = w ⊙ ∇m_i (ASAM-scaled margin gradient over the scope), s_i = σ(γ − βm_i) (the
probe loss's weight on pair i) and G = [⟨ũ_i, ũ_j⟩] over a batch,

    Γ_i ≈ −⟨∇m_i, δ⟩ = ρ · Σ_j s_j G_ij / sqrt(sᵀ G s)
        = ρ · s_i G_ii / sqrt(sᵀGs)      (the pair's own term: large for large gradients)
        + ρ · Σ_{j≠i} s_j G_ij / sqrt(sᵀGs)   (agreement with the other pairs of the batch).

The script scores the pairs in the same length-sorted batches of 8 as `robalign score`, computes every
pair's ũ_i with its own backward pass, and reports how well each part ranks the flipped pairs (AUROC;
a large own term or cross term means a large Γ and so a low weight), next to the exact anchor's AUROC
and the model's own margin, and how much of the exact Γ each part explains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--dir", default="outputs/hh-gapo")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from robalign.data import load_pairs
    from robalign.data.collate import collate
    from robalign.data.tokenize import tokenize_pairs
    from robalign.logprobs import sequence_logps
    from robalign.losses.gapo import flip_auroc_ranked, gapo_loss
    from robalign.methods.gapo import GapoMethod
    from robalign.methods.gapo_anchor import margin_of
    from robalign.methods.gapo_weights import asam_weights, requiring_grad, scoped_parameters
    from robalign.models import disable_dropout, load_model_and_tokenizer

    base = ROOT / args.dir
    model, tok = load_model_and_tokenizer(str(base / f"gapo_s{args.seed}" / "final"))
    disable_dropout(model)
    model.eval().requires_grad_(False)
    method = GapoMethod()
    beta, gamma, rho = method.beta, method.gamma, method.params.radius
    pairs = load_pairs(str(base / f"flip0.2_s{args.seed}.jsonl")).pairs[:args.pairs]
    data, _ = tokenize_pairs(tok, pairs, max_length=args.max_length, max_prompt_length=0)
    named = scoped_parameters(model, method.params.scope, method.params.last_k)
    params = [p for _, p in named]
    w = asam_weights(model, named)

    def scaled_gradient(pair) -> torch.Tensor:
        with requiring_grad(params):
            margin = margin_of(sequence_logps(model, collate([pair], tok.pad_token_id)), None, "simpo")[0]
            grads = torch.autograd.grad(margin, params)
        return torch.cat([(wi * g).flatten() for wi, g in zip(w, grads)])

    rows = []
    order = sorted(range(len(data)), key=lambda i: len(data[i]))
    for start in range(0, len(order), 8):
        group = [data[i] for i in order[start:start + 8]]
        anchor = method.anchor(model, collate(group, tok.pad_token_id))
        _, gap, weight = gapo_loss(anchor.margin, anchor.anchor_margin, beta=beta, gamma=gamma)
        u = torch.stack([scaled_gradient(p) for p in group])
        gram = (u @ u.T).double()
        del u
        s = torch.sigmoid(gamma - beta * anchor.margin.double())
        scale = rho / torch.sqrt(s @ gram @ s)
        first_order = scale * (gram @ s)
        own = scale * s * gram.diagonal()
        for k, p in enumerate(group):
            rows.append({"id": p.id, "is_flipped": bool(p.is_flipped), "margin": float(anchor.margin[k]),
                         "gap": float(gap[k]), "weight": float(weight[k]), "gap_first_order": float(first_order[k]),
                         "own": float(own[k]), "cross": float(first_order[k] - own[k]),
                         "grad_sq": float(gram[k, k])})
        print(f"{len(rows)}/{len(data)} pairs", flush=True)

    col = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0] if k != "id"}
    flags = col["is_flipped"]
    auroc = {name: float(flip_auroc_ranked(score, flags)) for name, score in (
        ("exact_minus_weight", -col["weight"]), ("minus_margin", -col["margin"]), ("own_term", col["own"]),
        ("cross_term", col["cross"]), ("grad_sq", col["grad_sq"]))}
    summary = {"seed": args.seed, "pairs": len(rows), "flipped": int(flags.sum()), "flip_auroc": auroc,
               "spearman_gap_vs_first_order": spearman(col["gap"], col["gap_first_order"]),
               "spearman_gap_vs_own": spearman(col["gap"], col["own"]),
               "spearman_gap_vs_cross": spearman(col["gap"], col["cross"]),
               "spearman_gap_vs_minus_margin": spearman(col["gap"], -col["margin"]),
               "mean_abs_own": float(col["own"].abs().mean()), "mean_abs_cross": float(col["cross"].abs().mean())}
    out = Path(args.out or base / f"anatomy_s{args.seed}.json")
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
