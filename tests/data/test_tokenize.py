import pytest

from robalign.data.pairs import PreferencePair
from robalign.data.tokenize import tokenize_pair
from robalign.errors import DataError
from robalign.models import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_string_prompt_eos_once_and_no_special_tokens_in_prompt(tok):
    pair = PreferencePair("Hi there", " yes", " no")
    t = tokenize_pair(tok, pair, 0, max_length=100, max_prompt_length=50)
    assert tok.decode(t.prompt_ids) == "Hi there"
    assert t.chosen_ids[-1] == tok.eos_token_id and t.chosen_ids.count(tok.eos_token_id) == 1
    assert tok.decode(t.chosen_ids[:-1]) == " yes"


def test_completion_already_ending_with_eos_gets_no_second_one(tok):
    pair = PreferencePair("Hi", " yes<|im_end|>", " no")
    t = tokenize_pair(tok, pair, 0, max_length=100, max_prompt_length=50)
    assert t.chosen_ids.count(tok.eos_token_id) == 1


def test_chat_prompt_uses_template_and_end_of_turn_is_the_eos(tok):
    pair = PreferencePair([{"role": "user", "content": "Say hi"}], "hi", "bye")
    t = tokenize_pair(tok, pair, 0, max_length=200, max_prompt_length=100)
    assert tok.decode(t.prompt_ids) == "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(t.chosen_ids) == "hi<|im_end|>"
    assert t.chosen_ids.count(tok.eos_token_id) == 1


def test_truncation_prompt_keeps_end_completion_keeps_start(tok):
    pair = PreferencePair("0123456789", "abcdefghij", "ABCDEFGHIJ")
    t = tokenize_pair(tok, pair, 0, max_length=12, max_prompt_length=4)
    assert tok.decode(t.prompt_ids) == "6789"
    assert tok.decode(t.chosen_ids) == "abcdefgh"  # 12 - 4 = 8 tokens, EOS cut too
    assert len(t.prompt_ids) + len(t.chosen_ids) == 12


def test_prompt_that_fills_budget_is_a_data_error(tok):
    pair = PreferencePair("x" * 30, "a", "b", id="row7")
    with pytest.raises(DataError, match="prompt alone has 30 tokens"):
        tokenize_pair(tok, pair, 6, max_length=30, max_prompt_length=0)
