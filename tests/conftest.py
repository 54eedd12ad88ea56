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
def tiny():
    """(model, tokenizer) of the seeded tiny random Llama; tests must not modify the model in place."""
    from robalign.models import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny-llama", seed=0)


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
