"""`robalign score`: rank a dataset's pairs by GAPO anchor gap at a given model (data valuation).

Each batch gets its own anchor: its probe gradient picks δ, and every pair's gap Γ_i = m_i(θ) − m_i(θ+δ)
and weight σ(γ − βΓ_i) are measured against that batch's anchor (as in one GAPO training step, without
the update). High weight = stable under the pessimistic probe; low weight = brittle, likely noise.
Pairs are batched by length, so a pair's score depends a little on which pairs share its batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from robalign import jsonl
from robalign.errors import UserError


def register_cli(sub):
    p = sub.add_parser("score", help="rank preference pairs by GAPO anchor gap (data valuation)",
                       description="Writes one JSON row per pair {id, gap, weight, margin, is_flipped?}, sorted "
                                   "by weight σ(γ − βΓ) descending (most stable first).")
    p.add_argument("--model", required=True, help="model directory, hub id, .gguf, or a built-in name")
    p.add_argument("--data", required=True, help="preference data (.jsonl[.gz] / .json / .parquet / hf:NAME)")
    p.add_argument("--out", required=True, help="scores JSONL to write")
    from robalign.methods.gapo import GapoParams

    d = GapoParams()  # the defaults are gapo's own
    p.add_argument("--radius", type=float, default=d.radius, help=f"anchor radius ρ [{d.radius}]")
    p.add_argument("--beta", type=float, default=d.beta, help=f"β [{d.beta}]")
    p.add_argument("--gamma", type=float, default=d.gamma, help=f"γ [{d.gamma}]")
    p.add_argument("--perturbation", choices=_choices(GapoParams, "perturbation"), default=d.perturbation)
    p.add_argument("--scope", choices=_choices(GapoParams, "scope"), default=d.scope)
    p.add_argument("--last-k", type=int, default=d.last_k, help="blocks perturbed with --scope last_k_layers")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--limit", type=int, default=0, help="score only the first N pairs (0 = all)")
    p.add_argument("--skip-invalid", action="store_true", help="skip bad rows and pairs longer than max-length")
    p.add_argument("--keep-fraction", type=float, default=None,
                   help="also write this most stable share of the original rows to --keep-out")
    p.add_argument("--keep-out", default=None, help="where --keep-fraction writes the kept rows")
    p.set_defaults(func=cmd_score)


def _choices(cls, key: str) -> list[str]:
    return list(next(f for f in dataclasses.fields(cls) if f.name == key).metadata["choices"])


def _settings(args):
    """(method, data config) from the arguments; UserError for invalid values."""
    from robalign.config import build_config
    from robalign.methods.gapo import GapoMethod, GapoParams

    if args.batch_size < 1 or args.limit < 0:
        raise UserError("score: --batch-size must be >= 1 and --limit >= 0")
    if (args.keep_fraction is None) != (args.keep_out is None):
        raise UserError("score: --keep-fraction and --keep-out go together")
    if args.keep_fraction is not None and not 0 < args.keep_fraction <= 1:
        raise UserError(f"score: --keep-fraction must be in (0, 1], got {args.keep_fraction}")
    try:
        params = GapoParams(beta=args.beta, gamma=args.gamma, radius=args.radius, perturbation=args.perturbation,
                            scope=args.scope, last_k=args.last_k)
    except ValueError as err:
        raise UserError(f"score: {err}") from None
    dc = build_config({"data": {"max_length": args.max_length}}).data
    return GapoMethod(params), dc


def score_pairs(model, pairs, method, *, pad_id: int, batch_size: int = 8) -> list[dict]:
    """Anchor gap, weight and margin of tokenised pairs, one anchor per length-sorted batch.

    Returns one dict per pair, in the order of `pairs`: {id, index, gap, weight, margin, is_flipped?}.
    """
    from robalign.data.collate import collate
    from robalign.losses.gapo import gapo_loss

    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]))
    rows: list[dict | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        batch = collate([pairs[i] for i in group], pad_id).to(device)
        anchor = method.anchor(model, batch)
        _, gap, weight = gapo_loss(anchor.margin, anchor.anchor_margin, beta=method.beta, gamma=method.gamma)
        for k, i in enumerate(group):
            row = {"id": pairs[i].id, "index": pairs[i].index, "gap": float(gap[k]),
                   "weight": float(weight[k]), "margin": float(anchor.margin[k])}
            if pairs[i].is_flipped is not None:
                row["is_flipped"] = bool(pairs[i].is_flipped)
            rows[i] = row
    return rows


def cmd_score(args) -> int:
    from robalign.data import load_pairs, write_pairs
    from robalign.data.tokenize import tokenize_pairs
    from robalign.losses.gapo import flip_auroc_ranked
    from robalign.models import disable_dropout, load_model_and_tokenizer

    method, dc = _settings(args)
    loaded = load_pairs(args.data, skip_invalid=args.skip_invalid, limit=args.limit or None)
    model, tok = load_model_and_tokenizer(args.model)
    disable_dropout(model)
    model.eval().requires_grad_(False)  # the anchor differentiates only its scope, temporarily
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    data, too_long = tokenize_pairs(tok, loaded.pairs, max_length=dc.max_length,
                                    max_prompt_length=dc.prompt_budget, skip_invalid=args.skip_invalid)
    if not data:
        raise UserError(f"score: no pair of {args.data} fits --max-length {dc.max_length}")
    rows = score_pairs(model, data, method, pad_id=tok.pad_token_id, batch_size=args.batch_size)
    ranked = sorted(rows, key=lambda r: -r["weight"])  # stable: ties keep the data order
    jsonl.write_rows(args.out, ({k: v for k, v in r.items() if k != "index"} for r in ranked))
    weights = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    flags = torch.tensor([float(r.get("is_flipped", math.nan)) for r in rows], dtype=torch.float64)
    print(f"scored {len(rows)} pairs of {args.data} ({loaded.skipped} invalid rows and {too_long} too long "
          f"skipped) -> {args.out}")
    print(f"mean weight {float(weights.mean()):.4f}   mean gap "
          f"{sum(r['gap'] for r in rows) / len(rows):.4g}   (ρ {args.radius}, β {args.beta}, γ {args.gamma})")
    auroc = float(flip_auroc_ranked(-weights, flags))
    if not math.isnan(auroc):
        margins = torch.tensor([r["margin"] for r in rows], dtype=torch.float64)
        print(f"flip AUROC of −weight: {auroc:.4f} ({int((flags == 1).sum())} flipped, "
              f"{int((flags == 0).sum())} clean); of −margin: {float(flip_auroc_ranked(-margins, flags)):.4f} "
              "(the model's own preference: the anchor gap mostly sharpens it)")
    if args.keep_fraction is not None:
        n_keep = max(1, math.ceil(args.keep_fraction * len(ranked)))
        kept = sorted(r["index"] for r in ranked[:n_keep])  # original order of the kept rows
        write_pairs([loaded.pairs[i] for i in kept], args.keep_out)
        print(f"kept the {n_keep} most stable pairs ({args.keep_fraction:.0%}) -> {args.keep_out}")
    return 0
