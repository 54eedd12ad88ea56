"""Preference data: reading, validation, implicit prompts, splits and noise injection."""

from robalign.data.implicit import ASSISTANT_MARKER, split_implicit_messages, split_implicit_text
from robalign.data.io import LoadResult, load_pairs, row_to_pair, write_pairs
from robalign.data.noise import NOISE_KINDS, clean_labels, inject_noise, inject_noise_with_info, unscored
from robalign.data.pairs import Messages, PreferencePair, Text
from robalign.data.split import take, train_eval_split

__all__ = [
    "ASSISTANT_MARKER",
    "NOISE_KINDS",
    "LoadResult",
    "Messages",
    "PreferencePair",
    "Text",
    "clean_labels",
    "inject_noise",
    "inject_noise_with_info",
    "load_pairs",
    "row_to_pair",
    "split_implicit_messages",
    "split_implicit_text",
    "take",
    "train_eval_split",
    "unscored",
    "write_pairs",
]
