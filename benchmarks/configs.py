"""The benchmark configurations: what robalign runs, what its TRL peer runs, how FLOPs are counted.

`peer` configurations run both frameworks on the same model, pairs, batches and optimiser settings.
`robalign_only` configurations run only robalign and are reported as a time ratio to robalign's step of
their `baseline` configuration (e.g. GAPO against SimPO: the price of the anchor).
"""

from __future__ import annotations

SMOLLM = "smollm2-135m-instruct"
TINY = "tiny-llama"
LORA = {"r": 16, "alpha": 32.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}

# flops: (train, reference) as understood by common.useful_flops.
CONFIGS: dict[str, dict] = {
    "dpo_live": {
        "model": SMOLLM, "lora": None, "flops": ("full", "live"),
        "robalign": {"method": "dpo", "reference": "copy"},
        "trl": {"kind": "dpo", "beta": 0.1},
        "what": "full fine-tune, live frozen-copy reference; TRL DPOTrainer(ref_model=frozen copy, sigmoid)",
    },
    "dpo_live_selective": {
        "model": SMOLLM, "lora": None, "flops": ("full", "live"), "baseline": "dpo_live",
        "robalign": {"method": "dpo", "reference": "copy",
                     "overrides": {"train.activation_checkpointing": "selective"}},
        "what": "dpo_live with selective activation checkpointing (matmul outputs kept, elementwise work "
                "recomputed); ratio to robalign dpo_live",
    },
    "dpo_cached": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"),
        "robalign": {"method": "dpo", "reference": "cached"},
        "trl": {"kind": "dpo", "beta": 0.1, "precompute_ref_log_probs": True},
        "what": "full fine-tune, reference log-probs precomputed once (build time reported separately); "
                "TRL precompute_ref_log_probs=True",
    },
    "lora": {
        "model": SMOLLM, "lora": LORA, "flops": ("lora", "live"),
        "robalign": {"method": "dpo", "reference": "adapters_disabled"},
        "trl": {"kind": "dpo", "beta": 0.1},
        "what": "LoRA r=16 alpha=32 on all 7 projections, reference = adapters disabled (both)",
    },
    "simpo": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"),
        "robalign": {"method": "simpo"},
        "trl": {"kind": "cpo_simpo", "beta": 2.0, "gamma": 0.5},
        "what": "SimPO (beta 2, gamma 0.5), full fine-tune; TRL CPOTrainer(loss_type='simpo', cpo_alpha=0)",
    },
    "tiny": {
        "model": TINY, "lora": None, "flops": ("full", "live"),
        "robalign": {"method": "dpo", "reference": "copy"},
        "trl": {"kind": "dpo", "beta": 0.1},
        "what": "tiny-llama (random, 2 layers, hidden 64) DPO full fine-tune, live reference",
    },
    "gapo": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"), "baseline": "simpo",
        "robalign": {"method": "gapo", "overrides": {"gapo.anchor": "exact", "gapo.reuse_graph": True}},
        "what": "GAPO, exact anchor, probe graph reused (2 fwd + 2 bwd); ratio to robalign simpo",
    },
    "gapo_first_order": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"), "baseline": "simpo",
        "robalign": {"method": "gapo", "overrides": {"gapo.anchor": "first_order"}},
        "what": "GAPO, first-order anchor (forward-mode JVP); ratio to robalign simpo",
    },
    "gapo_last2": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"), "baseline": "simpo",
        "robalign": {"method": "gapo", "overrides": {"gapo.anchor": "exact", "gapo.scope": "last_k_layers",
                                                     "gapo.last_k": 2}},
        "what": "GAPO, exact anchor on the last 2 blocks (probe backward and anchor forward through them only)",
    },
    "gapo_first_order_last2": {
        "model": SMOLLM, "lora": None, "flops": ("full", "none"), "baseline": "simpo",
        "robalign": {"method": "gapo", "overrides": {"gapo.anchor": "first_order", "gapo.scope": "last_k_layers",
                                                     "gapo.last_k": 2}},
        "what": "GAPO, first-order anchor on the last 2 blocks (forward-mode pass through them only)",
    },
    "oracle_robust": {
        "model": SMOLLM, "lora": None, "flops": ("full", "live"), "baseline": "dpo_live",
        "robalign": {"method": "oracle_robust"},
        "what": "oracle-robust online alignment (generation + R-SCGD step); ratio to robalign dpo",
    },
    "sail": {
        "model": SMOLLM, "lora": None, "flops": ("full", "live"), "baseline": "dpo_live",
        "robalign": {"method": "sail"},
        "what": "SAIL (online DPO with self-generated pairs); ratio to robalign dpo",
    },
}

DEFAULT_CONFIGS = list(CONFIGS)
