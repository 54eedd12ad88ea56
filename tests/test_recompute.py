import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_pairs
from robalign.config import build_config
from robalign.errors import ConfigError
from robalign.trainer import Trainer


def _trainer(tmp_path, mode, method="dpo", lora_r=0, extra=None):
    tree = {"model": {"name": "tiny-llama", "lora_r": lora_r}, "method": {"name": method},
            "data": {"max_length": 64},
            "train": {"output_dir": str(tmp_path / f"{method}-{mode}-{lora_r}"), "batch_size": 3, "max_steps": 3,
                      "lr": 1e-2, "progress": False, "eval_at_start": False, "save_final": False,
                      "activation_checkpointing": mode},
            **(extra or {})}
    return Trainer(build_config(tree), train_pairs=make_pairs(9), eval_pairs=make_pairs(3, seed=1))


def _train(tmp_path, mode, **kw):
    trainer = _trainer(tmp_path, mode, **kw)
    losses = [float(trainer.step()["loss"]) for _ in range(3)]
    losses.append(trainer.evaluate()["eval/accuracy_M"])  # also under no_grad, blocks still switched
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


BOTH = ("selective", "full")


INTEGRATION = pytest.mark.integration  # the same check for more methods: the integration tier runs them


@pytest.mark.parametrize("method,lora_r,extra,modes", [
    ("dpo", 0, None, BOTH), pytest.param("simpo", 0, None, BOTH, marks=INTEGRATION),
    pytest.param("dpo", 8, None, BOTH, marks=INTEGRATION),
    pytest.param("gapo", 0, {"gapo": {"radius": 0.5}}, ("full",), marks=INTEGRATION),
    ("gapo", 0, {"gapo": {"radius": 0.5, "margin": "dpo", "reuse_graph": False}}, BOTH),
    pytest.param("gapo", 0, {"gapo": {"radius": 0.5, "anchor": "first_order", "scope": "last_k_layers",
                                      "last_k": 1, "reuse_graph": False}}, BOTH, marks=INTEGRATION),
    ("sail", 0, {"online": {"max_new_tokens": 6}}, BOTH),
    pytest.param("oracle_robust", 0, {"online": {"max_new_tokens": 6}}, BOTH, marks=INTEGRATION),
])
def test_checkpointed_training_is_bit_identical(tmp_path, method, lora_r, extra, modes):
    base_losses, base = _train(tmp_path, "none", method=method, lora_r=lora_r, extra=extra)
    for mode in modes:
        losses, weights = _train(tmp_path, mode, method=method, lora_r=lora_r, extra=extra)
        assert losses == base_losses, mode
        for k in base:
            assert torch.equal(weights[k], base[k]), (mode, k)


@pytest.mark.parametrize("mode,gapo,needle", [
    ("selective", {}, "reuse_graph"),
    ("full", {"anchor": "first_order"}, "forward-mode"),
])
def test_gapo_combinations_checkpointing_cannot_run_are_refused_before_training(tmp_path, mode, gapo, needle):
    with pytest.raises(ConfigError, match=needle):
        _trainer(tmp_path, mode, method="gapo", extra={"gapo": gapo})


def test_selective_recomputes_no_matmul_and_full_recomputes_the_forward(tmp_path):
    flops = {}
    for mode in ("none", "selective", "full"):
        trainer = _trainer(tmp_path, mode)
        with FlopCounterMode(display=False) as counter:
            trainer.step()
        flops[mode] = counter.get_total_flops()
    assert flops["selective"] == flops["none"]
    # full re-runs each block's forward: more matmul work than the plain step, less than another step.
    assert flops["none"] < flops["full"] < 1.5 * flops["none"]


def test_checkpointing_really_recomputes_in_the_backward(tmp_path):
    trainer = _trainer(tmp_path, "selective")
    calls = []
    # The activation: recomputation stops early, once the backward has what it needs, before the MLP's end.
    act = trainer.model.model.layers[0].mlp.act_fn
    hook = act.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    try:
        trainer.step()
    finally:
        hook.remove()
    assert len(calls) == 2  # the forward, and its re-run inside the backward


def test_unknown_mode_fails_at_load():
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        build_config({"train": {"activation_checkpointing": "some"}})
