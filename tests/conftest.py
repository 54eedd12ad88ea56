import os
from pathlib import Path

import pytest

HH_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def hh_path():
    if not HH_PATH.is_file():
        pytest.skip(f"shared HH-RLHF data not found at {HH_PATH}")
    return HH_PATH


@pytest.fixture(scope="session")
def _tiny_original():
    from robalign.models import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny-llama", seed=0)


@pytest.fixture
def tiny(_tiny_original):
    """(model, tokenizer) of the seeded tiny random Llama: each test gets its own copy of the model (loaded once
    per session), so a test that trains it, accumulates gradients or changes its mode cannot leak into another."""
    import copy

    model, tok = _tiny_original
    return copy.deepcopy(model), tok


def make_pairs(n=6, seed=0):
    """Small synthetic string pairs of varied lengths."""
    import random

    from robalign.data.pairs import PreferencePair

    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    pairs = []
    for i in range(n):
        prompt = "Q: " + " ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) + "\nA:"
        chosen = " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        rejected = " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) + " no"
        pairs.append(PreferencePair(prompt, chosen, rejected, id=f"p{i}", is_flipped=bool(i % 3 == 0)))
    return pairs


@pytest.fixture
def fresh_accelerate_state(monkeypatch):
    """accelerate keeps one mixed precision per process; tests that change it start afresh (usefixtures)."""
    from accelerate.state import AcceleratorState

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


_PROGRESS_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


@pytest.fixture(autouse=True)
def _progress_bars_back_on():
    """`--progress false` (robalign.progress.silence) turns bars off for the whole process and the processes it
    starts; a test that passes it in-process must not silence the tests after it (test_cli reads the bars)."""
    import robalign.progress as progress

    before = {key: os.environ.get(key) for key in _PROGRESS_ENV}
    yield
    if not progress._silenced:
        return
    progress._silenced = False
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for module, switch in (("transformers.utils.logging", "enable_progress_bar"),
                           ("datasets.utils.logging", "enable_progress_bar"),
                           ("huggingface_hub.utils", "enable_progress_bars")):
        try:
            getattr(__import__(module, fromlist=[switch]), switch)()
        except (ImportError, AttributeError):
            pass
