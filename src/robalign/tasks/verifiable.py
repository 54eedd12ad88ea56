"""A built-in preference task with a programmatic gold reward: verifiable instructions.

Each prompt asks for a short text on a topic under one checkable constraint, e.g.
"Describe the ocean. Answer in exactly 3 words." A graded checker scores any response in [0, 1],
so the task gives a gold reward with no download and no reward model. The instruction
sentences are rendered from templates whose placeholders become regex groups, so a prompt is
recovered from its text alone (also inside a chat-templated string) and `VerifiableReward` needs no
registry.

Responses are written programmatically: a compliant one (score 1) and a non-compliant one whose
degree of failure varies, so gold margins vary. Lengths are drawn so that the compliant answer is
shorter in about half of the pairs: length is not a proxy for quality here, which lets the
length-bias oracle and the `length` dataset noise do real damage.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from robalign import jsonl
from robalign.data.pairs import PreferencePair

# Bump when prompts, responses or checkers change, so stale caches are not re-read.
TASK_VERSION = 1

TOPICS = (
    "the ocean",
    "a bicycle",
    "the moon",
    "a library",
    "winter",
    "a volcano",
    "the desert",
    "a city park",
    "honey bees",
    "a train station",
    "the rainforest",
    "chess",
    "a lighthouse",
    "coffee",
    "the internet",
    "a violin",
    "mountains",
    "a farmers market",
    "thunderstorms",
    "a museum",
    "rivers",
    "a kitchen garden",
    "penguins",
    "a telescope",
    "the night sky",
    "bread baking",
    "a small village",
    "recycling",
    "the human heart",
    "a marathon",
    "autumn leaves",
    "a sailboat",
    "glaciers",
    "wind turbines",
)
VERBS = ("Describe", "Explain", "Write a short note about", "Tell me about")
# Target words for start/end/include instructions: chosen to occur in no topic or filler sentence,
# so a checker never credits a response by accident.
KEYWORDS = (
    "lantern",
    "velvet",
    "meadow",
    "copper",
    "whisper",
    "harbor",
    "pebble",
    "orchid",
    "saffron",
    "compass",
    "ember",
    "tundra",
)
JSON_KEYS = ("summary", "topic", "answer", "description", "notes", "title")

# Comma-free filler sentences (the no-commas checker relies on it), each at least 6 words long
# (the start/end "far" failure modes rely on it).
_FILLER = (
    "Many people find {t} quite interesting.",
    "There is a lot to learn about {t}.",
    "Most of us have seen {t} at some point.",
    "Some details about {t} surprise newcomers.",
    "It helps to look at {t} from more than one angle.",
    "Writers have described {t} in many different ways.",
    "A careful look at {t} reveals small patterns.",
    "Children often ask simple questions about {t}.",
    "The history of {t} goes back a long way.",
    "Experts still study {t} with great care.",
    "You can notice {t} changing over time.",
    "Good photos of {t} show its quiet details.",
    "Everyone seems to have an opinion on {t}.",
    "Learning about {t} can be a pleasant hobby.",
    "Daily life is shaped by {t} in small ways.",
    "Stories about {t} are shared in many places.",
)
_KEYWORD_SENTENCES = (
    "A {w} fits this picture well.",
    "The idea of a {w} comes to mind.",
    "Picture a {w} somewhere nearby.",
)

# Placeholder -> regex group; params are ints exactly when their group is numeric.
_GROUPS = {"n": r"(?P<n>\d+)", "word": r"(?P<word>[a-z]+)", "key": r"(?P<key>[a-z_]+)"}
_TOPIC_RE = re.compile(r"(?:" + "|".join(map(re.escape, VERBS)) + r") (?P<topic>[^.\n]+)\. ")


@dataclass
class VerifiablePrompt:
    """One instruction prompt.

    Attributes:
        id: stable identifier, e.g. "verif-0-12".
        text: the user-facing text, e.g. "Describe the ocean. Answer in exactly 3 words."
        kind: the instruction kind, a key of `KINDS`.
        params: the instruction's parameters, e.g. {"n": 3}.
        topic: the base topic, e.g. "the ocean".
    """

    id: str
    text: str
    kind: str
    params: dict
    topic: str


@dataclass(frozen=True)
class _Kind:
    """An instruction kind: template, parameter sampler, graded checker, response writers."""

    template: str
    sample_params: Callable[[random.Random], dict]
    score: Callable[[dict, str], float]
    compliant: Callable[[dict, str, random.Random], str]
    noncompliant: Callable[[dict, str, random.Random], str]
    pattern: re.Pattern = field(init=False)

    def __post_init__(self):
        parts = re.split(r"\{(\w+)\}", self.template)
        regex = "".join(re.escape(p) if i % 2 == 0 else _GROUPS[p] for i, p in enumerate(parts))
        object.__setattr__(self, "pattern", re.compile(regex))


# ---------------------------------------------------------------- text helpers


def _words(text: str) -> list[str]:
    return text.split()


def _bare(word: str) -> str:
    return word.strip(string.punctuation).lower()


def _sentences(topic: str, k: int, rng: random.Random) -> list[str]:
    """k distinct filler sentences about the topic (k ≤ len(_FILLER))."""
    return [s.format(t=topic) for s in rng.sample(_FILLER, k)]


def _body(topic: str, rng: random.Random, lo: int = 1, hi: int = 4) -> str:
    return " ".join(_sentences(topic, rng.randint(lo, hi), rng))


def _n_words(topic: str, n: int, rng: random.Random) -> str:
    """Exactly n whitespace-separated words of filler, ending with a period."""
    words: list[str] = []
    while len(words) < n:
        words += _words(_body(topic, rng, 2, 3))
    words = words[:n]
    words[-1] = words[-1].rstrip(string.punctuation) + "."
    return " ".join(words)


def _count_sentences(text: str) -> int:
    pieces = re.findall(r"[^.!?]*[.!?]+|[^.!?]+$", text)
    return sum(1 for p in pieces if any(c.isalnum() for c in p))


def _count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def _letter_fraction(text: str, predicate: Callable[[str], bool]) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(map(predicate, letters)) / len(letters) if letters else 0.0


def _position_score(index: int | None) -> float:
    """Start/end graded score: 1 at the required position, 0.6 close to it, 0.3 elsewhere."""
    if index is None:
        return 0.0
    return 1.0 if index == 0 else 0.6 if index < 5 else 0.3


def _with_commas(text: str, count: int, rng: random.Random) -> str:
    words = _words(text)
    # A comma after a word that already ends a sentence would read badly; any other slot works.
    slots = [i for i, w in enumerate(words[:-1]) if not w.endswith(".")]
    for i in rng.sample(slots, min(count, len(slots))):
        words[i] += ","
    return " ".join(words)


# ---------------------------------------------------------------- checkers


def _score_exact_words(p: dict, text: str) -> float:
    return math.exp(-abs(len(_words(text)) - p["n"]) / 2)


def _score_max_words(p: dict, text: str) -> float:
    w = len(_words(text))
    # An empty answer "complies" vacuously; scoring it 0 keeps the reward from being gamed by silence.
    return 0.0 if w == 0 else min(1.0, p["n"] / w)


def _score_min_words(p: dict, text: str) -> float:
    return min(1.0, len(_words(text)) / p["n"])


def _score_no_commas(p: dict, text: str) -> float:
    return 1.0 / (1 + text.count(","))


def _score_start_with(p: dict, text: str) -> float:
    bare = [_bare(w) for w in _words(text)]
    return _position_score(bare.index(p["word"]) if p["word"] in bare else None)


def _score_end_with(p: dict, text: str) -> float:
    bare = [_bare(w) for w in reversed(_words(text))]
    return _position_score(bare.index(p["word"]) if p["word"] in bare else None)


def _score_lowercase(p: dict, text: str) -> float:
    return _letter_fraction(text, str.islower)


def _score_uppercase(p: dict, text: str) -> float:
    return _letter_fraction(text, str.isupper)


def _strip_fence(text: str) -> str:
    # Chat models often wrap JSON in a Markdown code fence; the JSON inside still counts.
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text


def _score_json_key(p: dict, text: str) -> float:
    try:
        value = json.loads(_strip_fence(text))
    except ValueError:
        return 0.25 if "{" in text and "}" in text else 0.0
    return 1.0 if isinstance(value, dict) and p["key"] in value else 0.5


def _score_include_word(p: dict, text: str) -> float:
    return min(1.0, _count_word(text, p["word"]) / p["n"])


def _score_sentences(p: dict, text: str) -> float:
    return 0.5 ** abs(_count_sentences(text) - p["n"])


# ---------------------------------------------------------------- response writers


def _exact_words_bad(p: dict, topic: str, rng: random.Random) -> str:
    d = rng.randint(1, 8)
    longer = rng.random() < 0.5 or p["n"] - d < 1
    return _n_words(topic, p["n"] + d if longer else p["n"] - d, rng)


def _start_with_good(p: dict, topic: str, rng: random.Random) -> str:
    return f"{p['word'].capitalize()}: {_body(topic, rng)}"


def _start_with_bad(p: dict, topic: str, rng: random.Random) -> str:
    body, mode = _body(topic, rng), rng.randrange(3)
    if mode == 0:
        return body
    if mode == 1:  # near the start: second to fifth word
        words = _words(body)
        words.insert(rng.randint(1, 4), p["word"])
        return " ".join(words)
    return f"{body} My closing word is {p['word']}."


def _end_with_good(p: dict, topic: str, rng: random.Random) -> str:
    return f"{_body(topic, rng)} My closing word is {p['word']}."


def _end_with_bad(p: dict, topic: str, rng: random.Random) -> str:
    body, mode = _body(topic, rng), rng.randrange(3)
    if mode == 0:
        return body
    if mode == 1:  # near the end, not last
        return f"{body} My closing word is {p['word']} today."
    return f"My opening word is {p['word']}. {body}"


def _lowercase_bad(p: dict, topic: str, rng: random.Random) -> str:
    body = _body(topic, rng)  # sentence case: a few capitals, a mild failure
    if rng.random() < 0.5:
        return body
    words = _words(body)
    for i in rng.sample(range(len(words)), rng.randint(1, len(words))):
        words[i] = words[i].upper()
    return " ".join(words)


def _uppercase_bad(p: dict, topic: str, rng: random.Random) -> str:
    words = _words(_body(topic, rng))
    # Keep one word with a lowercase letter as it is (not "A" or "I"), so the answer always fails.
    keep = rng.choice([i for i, w in enumerate(words) if any(c.islower() for c in w)])
    others = [i for i in range(len(words)) if i != keep]
    for i in rng.sample(others, rng.randint(0, len(others))):
        words[i] = words[i].upper()
    return " ".join(words)


def _json_good(p: dict, topic: str, rng: random.Random) -> str:
    return json.dumps({p["key"]: _body(topic, rng)})


def _json_bad(p: dict, topic: str, rng: random.Random) -> str:
    body, mode = _body(topic, rng), rng.randrange(3)
    if mode == 0:
        return body
    if mode == 1:  # braces but not JSON
        return "{" + f"{p['key']}: {body}" + "}"
    other = rng.choice([k for k in JSON_KEYS if k != p["key"]])
    return json.dumps({other: body})


def _with_keyword(p: dict, topic: str, count: int, rng: random.Random) -> str:
    extra = [rng.choice(_KEYWORD_SENTENCES).format(w=p["word"]) for _ in range(count)]
    sentences = _sentences(topic, rng.randint(1, 4), rng) + extra
    rng.shuffle(sentences)
    return " ".join(sentences)


def _n_sentences(topic: str, n: int, rng: random.Random) -> str:
    return " ".join(_sentences(topic, n, rng))


def _sentences_bad(p: dict, topic: str, rng: random.Random) -> str:
    d = rng.randint(1, 2)
    more = rng.random() < 0.5 or p["n"] - d < 1
    return _n_sentences(topic, p["n"] + d if more else p["n"] - d, rng)


def _rand_word(rng: random.Random) -> str:
    return rng.choice(KEYWORDS)


KINDS: dict[str, _Kind] = {
    "exact_words": _Kind(
        "Answer in exactly {n} words.",
        lambda r: {"n": r.randint(4, 20)},
        _score_exact_words,
        lambda p, t, r: _n_words(t, p["n"], r),
        _exact_words_bad,
    ),
    "max_words": _Kind(
        "Answer in at most {n} words.",
        lambda r: {"n": r.randint(6, 20)},
        _score_max_words,
        lambda p, t, r: _n_words(t, r.randint(max(2, p["n"] // 2), p["n"]), r),
        lambda p, t, r: _n_words(t, r.randint(p["n"] + 1, 3 * p["n"]), r),
    ),
    # The mirror of max_words: here the compliant answer is the longer one.
    "min_words": _Kind(
        "Answer in at least {n} words.",
        lambda r: {"n": r.randint(8, 30)},
        _score_min_words,
        lambda p, t, r: _n_words(t, r.randint(p["n"], p["n"] + 15), r),
        lambda p, t, r: _n_words(t, r.randint(max(1, p["n"] // 4), p["n"] - 1), r),
    ),
    "no_commas": _Kind(
        "Do not use any commas.",
        lambda r: {},
        _score_no_commas,
        lambda p, t, r: _body(t, r),
        lambda p, t, r: _with_commas(_body(t, r), r.randint(1, 4), r),
    ),
    "start_with": _Kind(
        'Start your answer with the word "{word}".',
        lambda r: {"word": _rand_word(r)},
        _score_start_with,
        _start_with_good,
        _start_with_bad,
    ),
    "end_with": _Kind(
        'End your answer with the word "{word}".',
        lambda r: {"word": _rand_word(r)},
        _score_end_with,
        _end_with_good,
        _end_with_bad,
    ),
    "lowercase": _Kind(
        "Write your answer in all lowercase letters.",
        lambda r: {},
        _score_lowercase,
        lambda p, t, r: _body(t, r).lower(),
        _lowercase_bad,
    ),
    "uppercase": _Kind(
        "Write your answer in all capital letters.",
        lambda r: {},
        _score_uppercase,
        lambda p, t, r: _body(t, r).upper(),
        _uppercase_bad,
    ),
    "json_key": _Kind(
        'Respond with valid JSON containing the key "{key}".',
        lambda r: {"key": r.choice(JSON_KEYS)},
        _score_json_key,
        _json_good,
        _json_bad,
    ),
    "include_word": _Kind(
        'Include the word "{word}" at least {n} times.',
        lambda r: {"word": _rand_word(r), "n": r.randint(2, 4)},
        _score_include_word,
        lambda p, t, r: _with_keyword(p, t, r.randint(p["n"], p["n"] + 1), r),
        lambda p, t, r: _with_keyword(p, t, r.randint(0, p["n"] - 1), r),
    ),
    "sentences": _Kind(
        "Use exactly {n} sentences.",
        lambda r: {"n": r.randint(2, 5)},
        _score_sentences,
        lambda p, t, r: _n_sentences(t, p["n"], r),
        _sentences_bad,
    ),
}


# ---------------------------------------------------------------- prompts and parsing


def make_prompts(n: int, seed: int) -> list[VerifiablePrompt]:
    """n prompts, deterministic for a seed; kinds are balanced (each block of len(KINDS) has all).

    The result for n is a prefix of the result for any larger n with the same seed.
    """
    rng = random.Random(seed)
    prompts, order = [], []
    for i in range(n):
        if not order:
            order = list(KINDS)
            rng.shuffle(order)
        kind = order.pop()
        params = KINDS[kind].sample_params(rng)
        topic, verb = rng.choice(TOPICS), rng.choice(VERBS)
        text = f"{verb} {topic}. {KINDS[kind].template.format(**params)}"
        prompts.append(VerifiablePrompt(f"verif-{seed}-{i}", text, kind, params, topic))
    return prompts


def parse_prompt(text: str, id: str = "") -> VerifiablePrompt:
    """Recover the instruction from a prompt text (searched, so chat templates around it are fine).

    Raises:
        ValueError: no verifiable instruction in the text.
    """
    for kind, spec in KINDS.items():
        match = spec.pattern.search(text)
        if match:
            params = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()}
            topic = _TOPIC_RE.search(text)
            return VerifiablePrompt(id, text, kind, params, topic.group("topic") if topic else "")
    raise ValueError(f"no verifiable instruction found in prompt {text[:120]!r}")


@lru_cache(maxsize=65536)
def _parse_cached(text: str) -> VerifiablePrompt:
    return parse_prompt(text)


def score(prompt: VerifiablePrompt | str, response: str) -> float:
    """Graded gold score in [0, 1] of a response to a prompt (a VerifiablePrompt or its text)."""
    if isinstance(prompt, str):
        prompt = _parse_cached(prompt)
    return float(KINDS[prompt.kind].score(prompt.params, response))


class VerifiableReward:
    """RewardFn: the graded score of each response, with the instruction parsed from the prompt.

    Call with prompts [N] (texts, raw or chat-templated) and responses [N]; returns float32 [N].

    Raises:
        ValueError: a prompt holds no verifiable instruction.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return torch.tensor([score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)


# ---------------------------------------------------------------- responses and pairs


def compliant_response(prompt: VerifiablePrompt, rng: random.Random) -> str:
    """A response on the prompt's topic that satisfies its instruction (score 1)."""
    return KINDS[prompt.kind].compliant(prompt.params, prompt.topic, rng)


def noncompliant_response(prompt: VerifiablePrompt, rng: random.Random) -> str:
    """A response on the topic that fails the instruction, by a randomly varying amount (score < 1)."""
    return KINDS[prompt.kind].noncompliant(prompt.params, prompt.topic, rng)


def _gold_pair(prompt: VerifiablePrompt, seed: int) -> PreferencePair:
    # One generator per prompt: a pair does not depend on how many pairs were requested.
    rng = random.Random(f"{prompt.id}-responses-{seed}")
    good, bad = compliant_response(prompt, rng), noncompliant_response(prompt, rng)
    s_good, s_bad = score(prompt, good), score(prompt, bad)
    if s_bad > s_good:  # never for the built-in writers; kept so the ordering is by score by definition
        good, bad, s_good, s_bad = bad, good, s_bad, s_good
    return PreferencePair(
        prompt=[{"role": "user", "content": prompt.text}],
        chosen=good,
        rejected=bad,
        id=prompt.id,
        is_flipped=False,
        chosen_score=s_good,
        rejected_score=s_bad,
        extra={"kind": prompt.kind},
    )


def make_preference_pairs(n: int, seed: int) -> list[PreferencePair]:
    """n preference pairs from `make_prompts(n, seed)`, chosen = the higher gold score.

    Labels are gold (`is_flipped=False`); `robalign.oracles.relabel_pairs` lets a noisy or misspecified
    oracle pick the winner instead.

    Args:
        n: number of pairs.
        seed: seeds prompts and responses.

    Returns:
        Pairs with chat-message prompts, `id` "verif-{seed}-{i}", gold `chosen_score`/`rejected_score`
        and `extra["kind"]`.
    """
    return [_gold_pair(p, seed) for p in make_prompts(n, seed)]


def cache_file(directory: str | os.PathLike, n: int, seed: int) -> Path:
    """Where `cache_pairs` keeps the pairs for (n, seed)."""
    return Path(directory) / f"verifiable-v{TASK_VERSION}-n{n}-seed{seed}.jsonl"


def read_jsonl(path: Path) -> list[PreferencePair]:
    known = ("prompt", "chosen", "rejected", "id", "is_flipped", "chosen_score", "rejected_score")
    pairs = []
    for row in jsonl.read_rows(path, encoding="utf-8"):
        fields = {k: row.pop(k) for k in known if k in row}
        pairs.append(PreferencePair(**fields, extra=row))
    return pairs


def cache_pairs(directory: str | os.PathLike, n: int, seed: int) -> list[PreferencePair]:
    """The gold pairs for (n, seed), written once as JSONL under `directory` and re-read after.

    The file name carries n, seed and the task version (see `cache_file`); it is written to a
    temporary file and renamed, so an interrupted run never leaves a truncated cache behind.
    """
    path = cache_file(directory, n, seed)
    if path.exists():
        return read_jsonl(path)
    pairs = make_preference_pairs(n, seed)
    jsonl.write_rows(path, (pair.to_row() for pair in pairs), encoding="utf-8")
    return pairs
