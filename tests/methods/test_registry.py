"""The method registry: TRL's loss names as aliases, and the renamed offline oracle-robust loss.

That each alias computes TRL's own loss is tested against TRL itself in tests/losses/test_offline.py
(`test_matches_trl`).
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from robalign.config import build_config
from robalign.errors import ConfigError
from robalign.losses import preference_loss
from robalign.methods import ALIASES, METHODS, canonical_name


def _batch(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(4, n, generator=g, dtype=torch.float64) * 40
    lengths = torch.randint(1, 30, (2, n), generator=g)
    return dict(chosen_logps=lp[0], rejected_logps=lp[1], ref_chosen_logps=lp[2], ref_rejected_logps=lp[3],
                chosen_lengths=lengths[0], rejected_lengths=lengths[1])


def test_trl_ipo_differs_from_our_default_ipo():
    """Why `ipo` is documented, not aliased: TRL's ipo is ours with normalize_length (test_matches_trl);
    our default sums the log-ratios (SPEC §2), which is another loss."""
    b = _batch()
    summed = preference_loss("ipo", **b, beta=0.2).per_pair
    averaged = preference_loss("ipo", **b, beta=0.2, normalize_length=True).per_pair
    assert canonical_name("ipo") == "ipo"
    assert (summed - averaged).abs().min() > 1e-3


def test_aliases_resolve_in_config_and_are_stored_canonical():
    cfg = build_config({"method": {"name": "sigmoid"}})
    assert cfg.method.name == "dpo"
    cfg = build_config({"method": {"name": "robust", "epsilon": 0.2}})
    assert cfg.method.name == "rdpo" and cfg.to_dict()["method"]["name"] == "rdpo"
    assert set(ALIASES.values()) <= set(METHODS)


def test_former_robust_with_rho_names_the_new_loss():
    with pytest.raises(ConfigError) as err:
        build_config({"method": {"name": "robust", "rho": 0.2}})
    msg = str(err.value)
    assert "oracle_robust_offline" in msg and "rdpo" in msg and msg.count("\n") == 0


def test_robust_alias_warns_that_it_is_rdpo(caplog, monkeypatch):
    import robalign.methods as methods

    monkeypatch.setattr(methods, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="robalign.methods"):
        assert canonical_name("robust") == "rdpo"
        canonical_name("robust")
    warnings = [r for r in caplog.records if "oracle_robust_offline" in r.getMessage()]
    assert len(warnings) == 1


def test_oracle_robust_offline_is_the_renamed_loss():
    b = _batch()
    h = (b["chosen_logps"] - b["ref_chosen_logps"]) - (b["rejected_logps"] - b["ref_rejected_logps"])
    out = preference_loss("oracle_robust_offline", **b, beta=0.5, rho=0.25)
    torch.testing.assert_close(out.per_pair, F.softplus(-0.5 * h) + 0.25 * 0.5 * h.abs(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="former name of oracle_robust_offline"):
        preference_loss("robust", **b)


@pytest.mark.parametrize("train_last_k", [1, 2])
def test_trunk_cache_settings_make_every_offline_method_trainable_above_a_cached_trunk(train_last_k):
    """A sweep with `--trunk-cache` tells each method its `trunk_cache_settings`; with them no method that
    can use a trunk cache at all refuses one (gapo refuses its default backbone scope)."""
    refusing = []
    for name, spec in METHODS.items():
        plain = spec.build(spec.params(), None)
        if plain.online:  # generates its pairs anew: never a trunk cache, whatever its settings
            continue
        if plain.trunk_cache_problem(train_last_k):
            refusing.append(name)
        told = spec.params.from_dict(spec.params.trunk_cache_settings(train_last_k))
        assert spec.build(told, None).trunk_cache_problem(train_last_k) is None, name
    assert refusing == ["gapo"]
