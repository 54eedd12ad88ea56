import pytest

from robalign.config import build_config, load_config
from robalign.errors import ConfigError


def test_defaults_validate_and_overrides_coerce():
    cfg = build_config({"method": {"name": "rdpo"}}, {"epsilon": "0.2", "train.max_steps": "7", "lora_r": "0"})
    assert cfg.method.epsilon == 0.2 and cfg.train.max_steps == 7 and cfg.model.lora_r == 0
    assert cfg.method.loss_params() == {"epsilon": 0.2}


@pytest.mark.parametrize("tree,overrides,match", [
    ({"method": {"name": "rdpo", "epsilon": 0.5}}, {}, "epsilon"),
    ({"method": {"name": "cdpo"}}, {"epsilon": "-0.1"}, "epsilon"),
    ({"method": {"name": "oracle_robust_offline", "rho": 0.7}}, {}, "rho"),
    ({"method": {"name": "dpo", "beta": -1}}, {}, "beta"),
    ({"method": {"name": "nope"}}, {}, "unknown method"),
    ({"train": {"lr": "fast"}}, {}, "train.lr"),
    ({"train": {"batch_size": 0}}, {}, "batch_size"),
    ({"train": {"bogus": 1}}, {}, "unknown key train.bogus"),
    ({"bogus": {}}, {}, "unknown section"),
    ({}, {"not_a_key": "1"}, "unknown option"),
    ({}, {"seed": "1"}, "ambiguous"),
    ({"data": {"max_length": 100, "max_prompt_length": 100}}, {}, "max_prompt_length"),
    ({"model": {"reference": "adapters_disabled", "lora_r": 0}}, {}, "adapters_disabled"),
    ({"train": {"optimizer": "lion"}}, {}, "optimizer"),
    ({"train": {"max_steps": 1.5}}, {}, "expected int"),
    ({"train": {"max_steps": True}}, {}, "expected int"),
    ({"train": {"lr": False}}, {}, "expected float"),
])
def test_invalid_values_fail_at_load_time(tree, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(tree, overrides)


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: simpo\n  gamma: 0.3\ntrain:\n  max_steps: 3\n")
    cfg = load_config(path, {"max_steps": "4"})
    assert cfg.method.gamma == 0.3 and cfg.train.max_steps == 4
    (tmp_path / "bad.yaml").write_text("method: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_hostile_yaml_gets_one_config_error(tmp_path):
    cases = {
        "latin1.yaml": ("train:\n  output_dir: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        "dup.yaml": (b"train:\n  lr: 1.0e-5\n  lr: 1.0e-3\n", "'lr' appears twice"),
        "recursive.yaml": (b"model:\n  lora_target_modules: &a [q_proj, *a]\n", "list of plain values"),
        "bomb.yaml": (b"a: &a [x, x]\n" + b"".join(f"a{i}: &a{i} [*a, *a]\n".encode() for i in range(120)),
                      "aliases"),
        "broken.yaml": (b"train: [\n", "invalid YAML"),
    }
    for name, (content, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=needle):
            load_config(path)


# --- paths in a config file ------------------------------------------------------------------------------


def test_relative_paths_in_a_config_file_are_read_from_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    (folder / "local-model").mkdir(parents=True)
    (folder / "cfg.yaml").write_text(
        "model: {name: local-model, trunk_cache_dir: cache}\n"
        "data: {train: data/train.jsonl, eval: /abs/eval.jsonl}\n"
        "train: {output_dir: ../runs/a}\n")
    monkeypatch.chdir(tmp_path / "exp" / "local-model")  # anywhere else
    cfg = load_config(folder / "cfg.yaml")
    assert cfg.data.train == str(folder / "data" / "train.jsonl")
    assert cfg.data.eval == "/abs/eval.jsonl"
    assert cfg.train.output_dir == str(tmp_path / "runs" / "a")
    assert cfg.model.name == str(folder / "local-model") and cfg.model.trunk_cache_dir == str(folder / "cache")
    # The command line's paths are the working directory's.
    cfg = load_config(folder / "cfg.yaml", {"data.train": "mine.jsonl", "output_dir": "out"})
    assert cfg.data.train == "mine.jsonl" and cfg.train.output_dir == "out"


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "tiny-llama", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_model_names_that_are_not_paths_stay_as_written(tmp_path, name):
    (tmp_path / "cfg.yaml").write_text(f"model: {{name: {name}}}\ndata: {{train: 'hf:org/prefs'}}\n")
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.model.name == name and cfg.data.train == "hf:org/prefs"


def test_example_configs_run_from_the_repository_root(monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    configs = sorted((repo / "configs" / "examples").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path.relative_to(repo))
        assert Path(cfg.data.train) == (repo.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz").resolve()
        assert Path(cfg.train.output_dir).parent == repo / "runs"


# --- method parameters: one Params per method, older layouts still load ----------------------------------


def test_method_parameters_are_the_methods_params():
    cfg = build_config({"method": {"name": "gapo", "beta": 1.5}})
    assert cfg.method.params.beta == 1.5 and cfg.method.radius == 0.05  # gapo's own defaults
    assert cfg.to_dict()["method"]["radius"] == 0.05 and "gapo" not in cfg.to_dict()
    assert build_config({"method": {"name": "simpo"}}).method.beta == 2.0


def test_a_methods_own_section_holds_more_of_its_parameters():
    flags = build_config({"method": {"name": "gapo"}}, {"gapo.radius": "0.2", "scope": "last_k_layers"})
    section = build_config({"method": {"name": "gapo"}, "gapo": {"radius": 0.2, "scope": "last_k_layers"}})
    inline = build_config({"method": {"name": "gapo", "radius": 0.2, "scope": "last_k_layers"}})
    assert flags.to_dict() == section.to_dict() == inline.to_dict()
    with pytest.raises(ConfigError, match="both as method.radius and as gapo.radius"):
        build_config({"method": {"name": "gapo", "radius": 0.1}, "gapo": {"radius": 0.2}})
    # The command line wins over the file, wherever either put the key.
    assert build_config({"gapo": {"radius": 0.1}, "method": {"name": "gapo"}}, {"radius": "0.3"}).method.radius == 0.3


def test_unknown_method_key_lists_the_methods_keys():
    with pytest.raises(ConfigError, match="does not take parameter.*epsilon.*it takes beta, sft_weight, sft_reduction"):
        build_config({"method": {"name": "dpo", "epsilon": 0.1}})
    with pytest.raises(ConfigError, match="unknown key method.bogus"):
        build_config({"method": {"name": "dpo", "bogus": 1}})


def test_an_older_config_yaml_loads_with_the_same_settings():
    """What robalign wrote before the methods owned their parameters: every method key, null where unset,
    and a section for every method with parameters of its own."""
    older = {"method": {"name": "dpo", "beta": None, "epsilon": None, "rho": None, "gamma": None, "beta_prime": None,
                        "normalize_length": None, "kind": None, "sft_weight": 0.0, "sft_reduction": "mean"},
             "gapo": {"radius": 0.05, "scope": "backbone"}, "sail": {"r": 0.4, "p": 0.3, "g": 0.3},
             "oracle_robust": {"sf_coef": 1.0, "projection_radius": None},
             "online": {"oracle": "", "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 64}}
    assert build_config(older).to_dict() == build_config({}).to_dict()
    sail = build_config({**older, "method": {**older["method"], "name": "sail"}, "sail": {"r": 0.0, "p": 0.5}})
    assert (sail.method.r, sail.method.p, sail.method.beta) == (0.0, 0.5, 0.1)
    with pytest.raises(ConfigError, match="gapo.radius"):  # another method's section is still checked
        build_config({"gapo": {"radius": -1.0}})
    with pytest.raises(ConfigError, match="sft_weight"):  # an SFT term a method cannot take is not dropped
        build_config({"method": {"name": "sail", "sft_weight": 0.5}})


def test_config_yaml_round_trips(tmp_path):
    import yaml

    for name in ("dpo", "cdpo", "gapo", "sail", "oracle_robust"):
        cfg = build_config({"method": {"name": name}, "train": {"output_dir": str(tmp_path)}})
        again = build_config(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
        assert again.to_dict() == cfg.to_dict()


def test_params_validate_on_construction():
    from robalign.losses.rdpo import Params
    from robalign.methods.gapo import GapoParams

    assert Params(epsilon=0.2).epsilon == 0.2 and isinstance(Params(beta=1).beta, float)
    for bad in ({"epsilon": 0.5}, {"beta": 0}, {"beta": "0.1"}, {"sft_reduction": "max"}):
        with pytest.raises(ValueError, match=f"rdpo.{next(iter(bad))}"):
            Params(**bad)
    with pytest.raises(ValueError, match="gapo.last_k must be >= 1"):
        GapoParams(last_k=0)
    with pytest.raises(ValueError, match="gapo.scope must be one of"):
        GapoParams(scope="head")
