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
