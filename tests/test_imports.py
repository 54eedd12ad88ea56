"""Every module imports (catches undefined names at import time and broken optional wiring)."""

import importlib
import pkgutil

import robalign


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(robalign.__path__, prefix="robalign.")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)


def test_cli_help_lists_config_keys(capsys):
    from robalign.cli import main

    try:
        main(["train", "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "--epsilon" in out and "--train.max-steps" in out
