"""Tests for robalign.oracles.rewards: the length, lexicon-sentiment and sequence-classifier rewards."""

from __future__ import annotations

import math

import pytest
import torch

from robalign.oracles import (
    BradleyTerryOracle,
    LengthReward,
    LexiconSentimentReward,
    SequenceClassifierReward,
)


def test_length_and_sentiment_rewards_by_hand():
    responses = ["one two three", "good great bad", "this is not good"]
    assert LengthReward()(["x"] * 3, responses).tolist() == [3.0, 3.0, 4.0]
    assert LengthReward("chars", scale=0.5)(["x"], ["abcd"]).tolist() == [2.0]
    got = LexiconSentimentReward()(["x"] * 3, responses)
    assert got.tolist() == pytest.approx([0.0, 1 / 2, -1 / math.sqrt(5)], abs=1e-6)


def tiny_reward_model(num_labels: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    words = "[PAD] [UNK] x the ocean is calm and blue good bad a very".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(words), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=num_labels
    )
    return GPT2ForSequenceClassification(config), tokenizer


def test_sequence_classifier_reward_runs_and_is_deterministic():
    model, tokenizer = tiny_reward_model(num_labels=1)
    model.train()  # the reward must switch dropout off itself
    responses = ["the ocean is calm", "bad", "a very very good blue ocean and the calm", "good"]
    prompts = ["x"] * 4
    batched = SequenceClassifierReward(model, tokenizer, batch_size=3)
    rewards = batched(prompts, responses)
    assert rewards.shape == (4,) and rewards.dtype == torch.float32
    assert torch.equal(rewards, batched(prompts, responses))
    # Right padding: a padded row scores like the same text alone.
    single = SequenceClassifierReward(model, tokenizer, batch_size=1)(prompts, responses)
    assert torch.allclose(rewards, single, atol=1e-5)
    assert rewards.unique().numel() == 4
    # It plugs into an oracle like any reward function.
    p = BradleyTerryOracle(batched).prob(prompts[:2], responses[:2], responses[2:])
    assert torch.allclose(p, torch.sigmoid((rewards[:2] - rewards[2:]).double()), atol=1e-6)


def test_sequence_classifier_reward_picks_positive_label():
    model, tokenizer = tiny_reward_model(num_labels=2)
    model.config.id2label = {0: "POSITIVE", 1: "NEGATIVE"}
    reward = SequenceClassifierReward(model, tokenizer)
    assert reward.label_index == 0
    logits = model(**tokenizer(["x\ngood"], return_tensors="pt")).logits
    assert torch.allclose(reward(["x"], ["good"]), logits[:, 0], atol=1e-5)
