"""Tests for robalign.losses.offline (SPEC §2).

Reference formulas here are written independently of the implementation: per element, in Python floats,
with numpy's logaddexp for softplus. Inputs are [B] float64 tensors, as at the real call site.
Tests of one loss alone live in tests/losses/test_<loss>.py and import their inputs and references from here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robalign.losses import LOSSES, LossOutput, preference_loss, validate_loss_params
from robalign.methods import ALIASES, canonical_name

LOG2 = math.log(2.0)
DT = torch.float64


def sp(x: float) -> float:
    """log(1 + e^x) in float64 without overflow, independent of torch."""
    return float(np.logaddexp(0.0, x))


# --- inputs ---------------------------------------------------------------------------------------


def make_batch(seed: int = 0, extreme: bool = True) -> dict:
    """Random [B] log-probs (with h = ±50, ±500 on some pairs when `extreme`) and lengths."""
    g = torch.Generator().manual_seed(seed)
    b = 12
    ref_c = -30 - 20 * torch.rand(b, generator=g, dtype=DT)
    ref_r = -30 - 20 * torch.rand(b, generator=g, dtype=DT)
    rej = ref_r + 3 * torch.randn(b, generator=g, dtype=DT)
    cho = ref_c + 3 * torch.randn(b, generator=g, dtype=DT)
    if extreme:  # set chosen so that h takes the target value exactly
        for i, h in zip(range(4), [50.0, -50.0, 500.0, -500.0]):
            cho[i] = ref_c[i] + (rej[i] - ref_r[i]) + h
    lc = torch.randint(1, 40, (b,), generator=g)
    lr = torch.randint(1, 40, (b,), generator=g)
    return dict(
        chosen_logps=cho,
        rejected_logps=rej,
        ref_chosen_logps=ref_c,
        ref_rejected_logps=ref_r,
        chosen_lengths=lc,
        rejected_lengths=lr,
    )


def rows(batch: dict) -> list[dict]:
    """The batch as a list of per-pair dicts of Python floats."""
    names = dict(c="chosen_logps", r="rejected_logps", rc="ref_chosen_logps", rr="ref_rejected_logps")
    names.update(lc="chosen_lengths", lr="rejected_lengths")
    n = batch["chosen_logps"].numel()
    return [{k: float(batch[v][i]) for k, v in names.items()} for i in range(n)]


# --- independent per-element references -----------------------------------------------------------


def h_of(x: dict) -> float:
    # Written as policy log-ratio minus reference log-ratio (the implementation groups by response).
    return (x["c"] - x["r"]) - (x["rc"] - x["rr"])


def ref_dpo(x, beta=0.1):
    return sp(-beta * h_of(x))


def ref_ipo(x, beta=0.1, normalize_length=False):
    if normalize_length:
        h = (x["c"] - x["rc"]) / x["lc"] - (x["r"] - x["rr"]) / x["lr"]
    else:
        h = h_of(x)
    return h * h - h / beta + 1.0 / (4.0 * beta * beta)  # expanded square


def ref_hinge(x, beta=0.1):
    return max(0.0, 1.0 - beta * h_of(x))


def ref_cdpo(x, beta=0.1, epsilon=0.1):
    z = beta * h_of(x)
    return (1 - epsilon) * sp(-z) + epsilon * sp(z)


def ref_rdpo(x, beta=0.1, epsilon=0.1):
    z = beta * h_of(x)
    return ((1 - epsilon) * sp(-z) - epsilon * sp(z)) / (1 - 2 * epsilon)


def ref_simpo(x, beta=2.0, gamma=0.5):
    m = x["c"] / x["lc"] - x["r"] / x["lr"]
    return sp(gamma - beta * m)


def ref_hypo(x, beta=0.1):
    m = (x["c"] - x["r"]) - max(0.0, x["rc"] - x["rr"])
    return sp(-beta * m)


def ref_sympo(x, beta=0.1, kind="ramp"):
    z = beta * h_of(x)
    if kind == "ramp":
        return min(1.0, max(0.0, (1.0 - z) / 2.0))
    return math.exp(-sp(z))  # sigma(-z) = 1 / (1 + e^z)


def ref_oracle_robust_offline(x, beta=0.1, rho=0.1):
    h = h_of(x)
    return sp(-beta * h) + rho * beta * abs(h)


CASES = [
    ("dpo", {}, ref_dpo),
    ("dpo", {"beta": 0.3}, ref_dpo),
    ("ipo", {}, ref_ipo),
    ("ipo", {"beta": 0.2, "normalize_length": True}, ref_ipo),
    ("hinge", {"beta": 0.25}, ref_hinge),
    ("cdpo", {}, ref_cdpo),
    ("cdpo", {"beta": 0.2, "epsilon": 0.3}, ref_cdpo),
    ("rdpo", {}, ref_rdpo),
    ("rdpo", {"beta": 0.2, "epsilon": 0.35}, ref_rdpo),
    ("simpo", {}, ref_simpo),
    ("simpo", {"beta": 2.5, "gamma": 0.3}, ref_simpo),
    ("hypo", {"beta": 0.2}, ref_hypo),
    ("sympo", {}, ref_sympo),
    ("sympo", {"beta": 0.05, "kind": "sigmoid"}, ref_sympo),
    ("oracle_robust_offline", {}, ref_oracle_robust_offline),
    ("oracle_robust_offline", {"beta": 0.2, "rho": 0.4}, ref_oracle_robust_offline),
    ("drdpo", {"beta": 0.2}, ref_dpo),
]


def _ids(case):
    return case[0] + "-" + "-".join(f"{k}={v}" for k, v in case[1].items()) if case[1] else case[0]


@pytest.mark.parametrize("name,params,ref", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_independent_formula(name, params, ref, seed):
    batch = make_batch(seed)
    out = preference_loss(name, **batch, **params)
    loss_params = {k: v for k, v in params.items() if k != "beta_prime"}
    want = torch.tensor([ref(x, **loss_params) for x in rows(batch)], dtype=DT)
    assert torch.isfinite(out.per_pair).all() and torch.isfinite(out.loss)
    torch.testing.assert_close(out.per_pair, want, rtol=1e-6, atol=1e-6)
    if name != "drdpo":
        torch.testing.assert_close(out.loss, want.mean(), rtol=1e-6, atol=1e-6)


def test_rewards_and_margin():
    batch = make_batch(4)
    out = preference_loss("dpo", **batch, beta=0.3)
    assert isinstance(out, LossOutput)
    c, r, rc, rr = (
        batch[k] for k in ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    )
    torch.testing.assert_close(out.chosen_rewards, 0.3 * (c - rc))
    torch.testing.assert_close(out.rejected_rewards, 0.3 * (r - rr))
    torch.testing.assert_close(out.margin, (c - r) - (rc - rr))
    s = preference_loss("simpo", **batch)  # reference-free: β · avg_θ
    lc, lr = batch["chosen_lengths"].to(DT), batch["rejected_lengths"].to(DT)
    torch.testing.assert_close(s.chosen_rewards, 2.0 * c / lc)
    torch.testing.assert_close(s.rejected_rewards, 2.0 * r / lr)
    torch.testing.assert_close(s.margin, c / lc - r / lr)
    h = preference_loss("hypo", **batch)
    torch.testing.assert_close(h.margin, (c - r) - torch.clamp(rc - rr, min=0))


def test_outputs_detached_but_loss_differentiable():
    batch = make_batch(5)
    batch["chosen_logps"].requires_grad_(True)
    for name in LOSSES:
        out = preference_loss(name, **batch)
        assert out.loss.requires_grad and out.loss.dim() == 0
        assert not (out.chosen_rewards.requires_grad or out.rejected_rewards.requires_grad)
        assert not out.margin.requires_grad
        assert out.per_pair.shape == out.margin.shape == (12,)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_margins_1e4(name, dtype):
    z = torch.zeros(4, dtype=dtype)
    cho = torch.tensor([1e4, -1e4, 0.0, 3.0], dtype=dtype, requires_grad=True)
    lengths = torch.ones(4)
    out = preference_loss(
        name,
        chosen_logps=cho,
        rejected_logps=z,
        ref_chosen_logps=z,
        ref_rejected_logps=z,
        chosen_lengths=lengths,
        rejected_lengths=lengths,
    )
    out.loss.backward()
    assert torch.isfinite(out.per_pair).all() and torch.isfinite(out.loss)
    assert torch.isfinite(cho.grad).all()


# --- worked numbers -------------------------------------------------------------------------------


def pair(h: list[float], ref_margin: list[float] | None = None, **lengths) -> dict:
    """Pairs with rejected log-probs 0 and the given h (and reference margin Δ_ref)."""
    h = torch.tensor(h, dtype=DT)
    d_ref = torch.zeros_like(h) if ref_margin is None else torch.tensor(ref_margin, dtype=DT)
    z = torch.zeros_like(h)
    return dict(
        chosen_logps=h + d_ref, rejected_logps=z, ref_chosen_logps=d_ref, ref_rejected_logps=z, **lengths
    )


def per_pair(name, batch, **params) -> list[float]:
    return preference_loss(name, **batch, **params).per_pair.tolist()


def test_worked_numbers():
    assert per_pair("dpo", pair([0.0])) == pytest.approx([LOG2], abs=1e-12)
    # β=0.1, h=10 ⇒ βh = 1: softplus(−1) = log(1 + 1/e) = 0.3132616875...
    assert per_pair("dpo", pair([10.0])) == pytest.approx([0.31326168751822286], abs=1e-12)
    assert per_pair("hinge", pair([10.0, 0.0, -10.0])) == pytest.approx([0.0, 1.0, 2.0], abs=1e-12)
    # IPO: h = 1/(2β) = 5 gives 0; h = 0 gives 1/(4β²) = 25.
    assert per_pair("ipo", pair([5.0, 0.0])) == pytest.approx([0.0, 25.0], abs=1e-12)
    # IPO normalised: log-ratios 10/2 and 0 ⇒ h = 5 ⇒ 0.
    ipo_len = pair([10.0], chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([3]))
    assert per_pair("ipo", ipo_len, normalize_length=True) == pytest.approx([0.0], abs=1e-12)
    # cDPO ε = 0.25 at βh = 1: 0.75 softplus(−1) + 0.25 softplus(1) = 0.75·0.31326 + 0.25·1.31326.
    assert per_pair("cdpo", pair([10.0]), epsilon=0.25) == pytest.approx([0.5632616875182229], abs=1e-12)
    # rDPO ε = 0.25 at βh = 1: (0.75·0.31326 − 0.25·1.31326) / 0.5 = −0.1867383...
    assert per_pair("rdpo", pair([10.0]), epsilon=0.25) == pytest.approx([-0.18673831248177714], abs=1e-12)
    assert per_pair("rdpo", pair([0.0]), epsilon=0.25) == pytest.approx([LOG2], abs=1e-12)
    # oracle_robust_offline: β=0.5, ρ=0.25, h=2 ⇒ softplus(−1) + 0.25·0.5·2.
    assert per_pair("oracle_robust_offline", pair([2.0]), beta=0.5, rho=0.25) == pytest.approx([0.31326168751822286 + 0.25])
    assert per_pair("sympo", pair([0.0, 10.0, -10.0, 4.0])) == pytest.approx([0.5, 0.0, 1.0, 0.3], abs=1e-12)
    assert per_pair("sympo", pair([0.0]), kind="sigmoid") == pytest.approx([0.5], abs=1e-12)
    # SimPO: M = γ/β = 0.25 ⇒ log 2. avg(y_w) = −1/4, avg(y_l) = −2/4.
    s = dict(chosen_logps=torch.tensor([-1.0], dtype=DT), rejected_logps=torch.tensor([-2.0], dtype=DT))
    s.update(chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([4]))
    assert per_pair("simpo", s) == pytest.approx([LOG2], abs=1e-12)
    # HyPO: a reference that disagrees with the label (Δ_ref < 0) is ignored; one that agrees is DPO.
    assert per_pair("hypo", pair([0.0], ref_margin=[-7.0])) == pytest.approx([sp(0.7)], abs=1e-12)
    assert per_pair("hypo", pair([0.0], ref_margin=[7.0])) == pytest.approx([LOG2], abs=1e-12)
    # Dr.DPO, two pairs with losses log 2 and softplus(−1), β′ = 1.
    d = preference_loss("drdpo", **pair([0.0, 10.0]))
    want = -math.log((0.5 + 1.0 / (1.0 + math.exp(-1.0))) / 2.0)
    assert d.loss.item() == pytest.approx(want, abs=1e-12)


# --- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,param", [("cdpo", "epsilon"), ("rdpo", "epsilon"), ("oracle_robust_offline", "rho")])
def test_zero_noise_is_dpo(name, param):
    batch = make_batch(6)
    base = preference_loss("dpo", **batch, beta=0.2)
    out = preference_loss(name, **batch, beta=0.2, **{param: 0.0})
    torch.testing.assert_close(out.per_pair, base.per_pair, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "rdpo", "drdpo", "oracle_robust_offline"])
def test_reference_equals_policy_gives_log2(name):
    batch = make_batch(7, extreme=False)
    batch["chosen_logps"], batch["rejected_logps"] = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    out = preference_loss(name, **batch)
    assert out.per_pair.tolist() == pytest.approx([LOG2] * 12, abs=1e-12)
    assert out.loss.item() == pytest.approx(LOG2, abs=1e-12)


# --- gradients ------------------------------------------------------------------------------------

# Margins chosen away from the kinks of hinge (βh = 1), ramp (βh = ±1) and |h| (h = 0) at β = 0.1.
GRAD_H = [-37.0, -4.0, 0.9, 2.3, 13.0, 21.0]


@pytest.mark.parametrize("name,params", [(c[0], c[1]) for c in CASES], ids=[_ids(c) for c in CASES])
def test_gradcheck(name, params):
    params = {k: v for k, v in params.items() if k != "beta"}  # keep β = default away from the kinks
    g = torch.Generator().manual_seed(13)
    n = len(GRAD_H)
    rej = -20 - 5 * torch.rand(n, generator=g, dtype=DT)
    ref_c = -20 - 5 * torch.rand(n, generator=g, dtype=DT)
    ref_r = -20 - 5 * torch.rand(n, generator=g, dtype=DT)
    cho = ref_c + (rej - ref_r) + torch.tensor(GRAD_H, dtype=DT)
    lengths = dict(chosen_lengths=torch.arange(1, n + 1), rejected_lengths=torch.arange(n, 0, -1))

    def f(c, r):
        out = preference_loss(
            name, chosen_logps=c, rejected_logps=r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
            **lengths, sft_weight=0.3, **params,
        )  # fmt: skip
        return out.loss, out.per_pair

    assert torch.autograd.gradcheck(f, (cho.requires_grad_(), rej.requires_grad_()))


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,param", [("cdpo", "epsilon"), ("rdpo", "epsilon"), ("oracle_robust_offline", "rho")])
@pytest.mark.parametrize("value", [-0.1, 0.5, 0.7, float("nan")])
def test_invalid_noise_rate_raises(name, param, value):
    with pytest.raises(ValueError, match=param):
        validate_loss_params(name, {param: value})
    with pytest.raises(ValueError, match=param):
        preference_loss(name, **make_batch(), **{param: value})


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("beta", [0.0, -0.1, float("inf"), "0.1", True])
def test_invalid_beta_raises(name, beta):
    with pytest.raises(ValueError, match="beta"):
        preference_loss(name, **make_batch(), beta=beta)


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("drdpo", {"beta_prime": 0.0}, "beta_prime"),
        ("sympo", {"kind": "hinge"}, "kind"),
        ("ipo", {"normalize_length": 1}, "normalize_length"),
        ("dpo", {"sft_weight": -1.0}, "sft_weight"),
        ("dpo", {"sft_reduction": "max"}, "sft_reduction"),
        ("simpo", {"gamma": float("nan")}, "gamma"),
    ],
)
def test_invalid_values_raise(name, params, match):
    with pytest.raises(ValueError, match=match):
        validate_loss_params(name, params)


def test_unknown_name_and_param_raise():
    with pytest.raises(ValueError, match="rdpo") as err:
        preference_loss("dpo2", **make_batch())
    assert all(n in str(err.value) for n in LOSSES)
    with pytest.raises(ValueError, match="epsilon"):
        preference_loss("dpo", **make_batch(), epsilon=0.1)  # label smoothing on plain DPO is not silent
    with pytest.raises(ValueError, match="rho"):
        validate_loss_params("cdpo", {"rho": 0.1})


def test_missing_inputs_raise():
    batch = make_batch()
    no_ref = {k: v for k, v in batch.items() if not k.startswith("ref")}
    no_len = {k: v for k, v in batch.items() if not k.endswith("lengths")}
    for name in LOSSES:
        if LOSSES[name].needs_reference:
            with pytest.raises(ValueError, match="ref_chosen_logps"):
                preference_loss(name, **no_ref)
    preference_loss("simpo", **no_ref)  # reference-free
    with pytest.raises(ValueError, match="lengths"):
        preference_loss("simpo", **{k: v for k, v in no_ref.items() if not k.endswith("lengths")})
    with pytest.raises(ValueError, match="lengths"):
        preference_loss("ipo", **no_len, normalize_length=True)
    with pytest.raises(ValueError, match="chosen_lengths"):
        preference_loss("dpo", **no_len, sft_weight=1.0)
    preference_loss("dpo", **no_len, sft_weight=1.0, sft_reduction="sum")
    preference_loss("ipo", **no_len)
    with pytest.raises(ValueError, match="shape"):
        preference_loss("dpo", **{**batch, "rejected_logps": batch["rejected_logps"][:3]})


def test_registry_and_defaults():
    assert sorted(LOSSES) == sorted("dpo ipo hinge cdpo rdpo simpo hypo sympo drdpo oracle_robust_offline".split())
    assert [n for n, s in LOSSES.items() if not s.needs_reference] == ["simpo"]
    assert validate_loss_params("simpo", {}) == {
        "beta": 2.0,
        "gamma": 0.5,
        "sft_weight": 0.0,
        "sft_reduction": "mean",
    }
    assert validate_loss_params("rdpo", {"epsilon": 0.2})["epsilon"] == 0.2
    assert validate_loss_params("drdpo", {})["beta_prime"] == 1.0
    assert validate_loss_params("sympo", {})["kind"] == "ramp"
    assert validate_loss_params("ipo", {})["normalize_length"] is False
    assert validate_loss_params("oracle_robust_offline", {})["rho"] == 0.1
    assert all(s.defaults["beta"] == 0.1 for n, s in LOSSES.items() if n != "simpo")


# --- TRL cross-check ------------------------------------------------------------------------------


def trl_per_pair(loss_type: str, batch: dict, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss from TRL's `DPOTrainer._compute_loss`, driven with a stub trainer and model.

    TRL keeps its loss formulas inline in `_compute_loss` (no standalone `dpo_loss`), so we call it
    once per pair (B = 1, so the batch mean is the per-pair loss) with precomputed reference log-probs
    and a model stub whose per-token log-probs sum to the given sequence log-probs.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    if not hasattr(DPOTrainer, "_compute_loss"):
        pytest.skip("this TRL version has no DPOTrainer._compute_loss to drive without building a trainer")
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda v: v, gather=lambda v: v),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    return torch.stack(
        [DPOTrainer._compute_loss(trainer, *_trl_model_and_inputs(x), False) for x in rows(batch)]
    )


def _trl_model_and_inputs(x: dict) -> tuple:
    """A stub model and a one-pair TRL batch ([chosen, rejected] rows, prompt = column 0)."""
    lens = [int(x["lc"]), int(x["lr"])]
    t = max(lens)
    mask = torch.zeros(2, t + 1, dtype=torch.long)
    logps = torch.zeros(2, t, dtype=DT)  # per-token log-probs, zero off the completion
    for i, (lp, n) in enumerate([(x["c"], lens[0]), (x["r"], lens[1])]):
        mask[i, 1 : n + 1] = 1
        logps[i, :n] = lp / n
    zeros = torch.zeros(2, t)
    outputs = SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    inputs = {
        "input_ids": torch.zeros(2, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(2, t + 1, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": torch.tensor([x["rc"]], dtype=DT),
        "ref_rejected_logps": torch.tensor([x["rr"]], dtype=DT),
    }
    return (lambda **kwargs: outputs), inputs


def test_matches_trl():
    pytest.importorskip("trl")
    batch = make_batch(14)
    beta = 0.2
    for ours, theirs, params in [
        ("dpo", "sigmoid", {}),
        ("hinge", "hinge", {}),
        ("ipo", "ipo", {"normalize_length": True}),  # TRL's IPO always length-normalises
        ("rdpo", "robust", {"epsilon": 0.2}),  # TRL's "robust" is rDPO
        # cDPO: TRL's "aot" applies label smoothing to the sorted margins; at B = 1 sorting is the identity.
        ("cdpo", "aot", {"epsilon": 0.2}),
    ]:
        want = trl_per_pair(theirs, batch, beta, label_smoothing=params.get("epsilon", 0.0))
        got = preference_loss(ours, **batch, beta=beta, **params).per_pair
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{ours} vs TRL {theirs}")
        # TRL's name, where it is an alias (robalign.methods.ALIASES), trains the loss that matched.
        if theirs in ALIASES or theirs in LOSSES:
            assert canonical_name(theirs, params) == ours
    # SPEC §2's peer bug: TRL's "sigmoid" loss ignores label_smoothing (TRL 1.16), so cDPO silently becomes
    # DPO there. Ours must not; if a later TRL applies the smoothing, it must then agree with our cdpo.
    smoothed = trl_per_pair("sigmoid", batch, beta, label_smoothing=0.2)
    cdpo = preference_loss("cdpo", **batch, beta=beta, epsilon=0.2).per_pair
    dpo = preference_loss("dpo", **batch, beta=beta).per_pair
    if torch.allclose(smoothed, dpo, rtol=1e-9, atol=1e-9):
        assert (cdpo - smoothed).abs().max() > 1e-3
    else:
        torch.testing.assert_close(cdpo, smoothed, rtol=1e-9, atol=1e-9)
