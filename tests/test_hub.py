"""An unreachable hub: one message at once, not 25–55 s of retries; cached or local files still load."""

import time

import datasets.config
import huggingface_hub.constants
import pytest

from robalign import hub
from robalign.data import load_pairs
from robalign.errors import DataError, UserError
from robalign.models import load_model_and_tokenizer


@pytest.fixture
def no_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    # go_offline() flips these module constants: registered here so that they are restored after the test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)
    hub.reachable.cache_clear()
    yield
    getattr(hub.reachable, "cache_clear", lambda: None)()  # a test may have replaced it


def test_probe_sees_a_closed_endpoint_and_switches_the_libraries_offline(no_hub):
    assert not hub.reachable()
    said = hub.prepare("model 'org/x'")
    assert "cannot be reached" in said and "org/x" in said
    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE


def test_a_hub_model_fails_at_once_with_one_message(no_hub):
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="cannot be reached.*not in the local hub cache"):
        load_model_and_tokenizer("someorg/no-such-model")
    assert time.perf_counter() - t0 < 15  # the libraries' own retries take 25–55 s


def test_a_hub_dataset_fails_at_once_with_one_message(no_hub):
    with pytest.raises(DataError, match="cannot be reached"):
        load_pairs("hf:someorg/no-such-data")


def test_local_models_never_probe_the_hub(no_hub, monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda *a: pytest.fail("probed the hub for a built-in model"))
    model, _ = load_model_and_tokenizer("tiny-llama")
    assert model is not None


def test_offline_requested_by_the_user_is_named(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline mode is on" in hub.prepare("dataset 'x'")


def _tiny_cfg(tmp_path, **train):
    from robalign.config import build_config

    return build_config({"model": {"name": "tiny-llama", "lora_r": 4}, "data": {"max_length": 64},
                         "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2,
                                   "progress": False, "push_to_hub": True, **train}})


def test_push_to_hub_is_refused_before_training_when_the_hub_is_unreachable(no_hub, tmp_path):
    from conftest import make_pairs
    from robalign.errors import ConfigError
    from robalign.trainer import Trainer

    with pytest.raises(ConfigError, match="push_to_hub: the hub .* cannot be reached"):
        Trainer(_tiny_cfg(tmp_path), train_pairs=make_pairs(4), eval_pairs=make_pairs(2))
    assert not (tmp_path / "run").exists()


def test_push_to_hub_uploads_final_with_its_card(tmp_path, monkeypatch):
    from conftest import make_pairs
    from robalign.trainer import Trainer

    calls = {}

    class FakeApi:  # the hub's API, recorded: nothing leaves this machine
        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)
            return type("Repo", (), {"repo_id": f"me/{repo_id}"})()

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            calls["upload"] = (sorted(p.name for p in Path(folder_path).iterdir()), repo_id, commit_message)

    import huggingface_hub

    monkeypatch.setattr(hub, "check_push", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    Trainer(_tiny_cfg(tmp_path, hub_model_id="my-dpo", hub_private_repo=True), train_pairs=make_pairs(4),
            eval_pairs=make_pairs(2)).train()
    assert calls["create"] == ("my-dpo", True, True)
    files, repo, message = calls["upload"]
    assert repo == "me/my-dpo" and "README.md" in files and "adapter" in files and "dpo" in message


def test_push_to_hub_needs_a_token(monkeypatch):
    import huggingface_hub

    from robalign.errors import ConfigError

    monkeypatch.setattr(hub, "prepare", lambda what: "")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="no hub token"):
        hub.check_push()
