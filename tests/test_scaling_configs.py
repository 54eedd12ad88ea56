"""The documented accelerate launcher configs parse with accelerate's own config loader."""

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.mixed_precision == "no"


def test_example_run_configs_validate():
    from robalign.config import load_config

    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "examples").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train.max_steps > 0
