"""A robustness sweep's grid: its settings (`SweepSpec`), the methods' sweep settings, the cells it holds and
where each is stored. One output folder holds one setting: `check_settings` refuses to mix cells of two.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from robalign.errors import UserError

# The sweep's overrides of the methods' own defaults (their `Params`, robalign.methods.METHODS).
METHOD_DEFAULTS = {"cdpo": {"epsilon": 0.2}, "rdpo": {"epsilon": 0.2}, "oracle_robust_offline": {"rho": 0.2}}


TRUE_RATE = "rate"  # `--param cdpo.epsilon=rate`: each cell tells the method its own noise rate


def method_settings(method: str, params: dict | None = None, rate: float | None = None) -> dict:
    """The settings a cell of `method` trains with: the sweep's defaults, then the user's `--param`s; a value
    `rate` becomes the cell's noise rate (the method is told the true rate), when `rate` is given."""
    merged = {**METHOD_DEFAULTS.get(method, {}), **(params or {}).get(method, {})}
    if rate is None:
        return merged
    return {k: (rate if v == TRUE_RATE else v) for k, v in merged.items()}


def parse_params(texts: list[str], methods: list[str]) -> dict[str, dict]:
    """`--param METHOD.KEY=VALUE` (repeatable) -> {method: {key: value}}; values are read as YAML scalars, so
    numbers, booleans and words arrive typed. The keys are checked when each cell's config is built."""
    import yaml

    out: dict[str, dict] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        method, dot, key = name.partition(".")
        if not sep or not dot or not key:
            raise UserError(f"bench: --param {text!r}: expected METHOD.KEY=VALUE, e.g. --param cdpo.epsilon=0.4")
        if method not in methods:
            raise UserError(f"bench: --param {text!r}: {method!r} is not one of --methods ({', '.join(methods)})")
        out.setdefault(method, {})[key] = yaml.safe_load(value)
    return out
# Online methods label their own generations: the cell's noise goes into their oracle as well (on top of
# the noisy pairs, which SAIL's data route still reads), through the oracle wrapper of the same name whose
# parameter is the rate: `flip` flips each label with probability rate, `length` mixes a length judge in
# with weight rate. `margin`'s threshold is in reward units, not a rate: online x margin is skipped.
ONLINE_GOLD = "bt:verifiable:0.1"
ONLINE_NOISE = ("flip", "length")
# Rate 0 is one clean run whatever the noise kind; it is stored under this kind's name (the first kind of
# every sweep before this rule), so a later sweep of another kind reuses it rather than training it again.
CLEAN_KIND = "flip"


def is_online(method: str) -> bool:
    from robalign.methods import build_method

    return build_method(method, {}).online


def online_oracle(kind: str, rate: float) -> str:
    return ONLINE_GOLD if rate == 0 else f"{ONLINE_GOLD}+{kind}:{rate:g}"


@dataclass
class SweepSpec:
    data: str  # a preference file, "verifiable" or "verifiable-sampled" (the built-in task)
    methods: list[str]
    kinds: list[str]
    rates: list[float]
    seeds: list[int]
    model: str
    steps: int
    batch_size: int
    lr: float
    train_pairs: int
    eval_pairs: int
    max_length: int
    lora_r: int
    out: Path
    gen_prompts: int = 0  # held-out prompts decoded per cell for gold reward / win rate / KL (built-in task)
    gen_max_new_tokens: int = 32
    # The long-training regime: an epochs budget (instead of `steps`), only the last k blocks trained, and
    # their frozen trunk computed once for every cell over the same texts (robalign.trunk).
    epochs: float = 0.0
    train_last_k: int = 0
    trunk_cache: str = "off"
    eval_per_epoch: float = 1.0
    keep_fraction: float = 1.0  # data.keep_fraction: train on the pairs the base model agrees with most
    params: dict = field(default_factory=dict)  # {method: {key: value}} from --param, over METHOD_DEFAULTS

    def cells(self):
        online = {m for m in self.methods if is_online(m)}
        seen = set()
        for kind, rate, seed, method in itertools.product(self.kinds, self.rates, self.seeds, self.methods):
            if method in online and kind not in ONLINE_NOISE:
                continue
            cell = (method, CLEAN_KIND if rate == 0 else kind, rate, seed)
            if cell not in seen:
                seen.add(cell)
                yield cell


# Settings added after the first sweeps: left out of settings.json at their defaults, so that older sweep
# folders keep matching the settings they were run with.
_LATER_SETTINGS = {"epochs": 0.0, "train_last_k": 0, "trunk_cache": "off", "eval_per_epoch": 1, "params": {},
                   "keep_fraction": 1.0}


def cell_dir(spec: SweepSpec, method, kind, rate, seed) -> Path:
    return spec.out / "cells" / f"{method}-{kind}-{rate:g}-s{seed}"


GOLD_TASKS = ("verifiable", "verifiable-sampled")  # built-in data with a gold reward


def check_settings(spec: SweepSpec, write: bool = True):
    """Cells are cached by (method, kind, rate, seed) only, so one output directory holds one setting."""
    skip = ("methods", "kinds", "rates", "seeds", "out") + (("gen_prompts", "gen_max_new_tokens")
                                                             if spec.gen_prompts == 0 else ())
    keep = {k: v for k, v in vars(spec).items()
            if k not in skip and not (k in _LATER_SETTINGS and v == _LATER_SETTINGS[k])}
    path = spec.out / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != keep:
        raise UserError(f"bench: {spec.out} holds cells of other settings ({path}); use another --out")
    if not write:
        if not path.is_file():
            raise UserError(f"bench: {spec.out} holds no sweep ({path} is missing); run it without --report-only")
        return
    spec.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=2))
