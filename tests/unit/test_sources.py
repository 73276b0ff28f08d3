"""GKD's on-policy mixing and DistiLLM's adaptive replay produce student samples as specified."""

import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE
from kdbench.sources import (
    AdaptiveReplay,
    OnPolicyMixed,
    make_source,
    prompt_length,
    sample_responses,
)

EOS, PAD = 0, 1


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30, n_positions=64,
                                      eos_token_id=EOS, bos_token_id=EOS, pad_token_id=PAD))


def dataset_batch(tag=5):
    return [{"input_ids": [7, 8, 9] + [tag, tag, EOS], "labels": [IGNORE] * 3 + [tag, tag, EOS]},
            {"input_ids": [10, 11] + [tag, EOS], "labels": [IGNORE] * 2 + [tag, EOS]}]


def stream():
    while True:
        yield dataset_batch()


def sampler(lm):
    return lambda batch: sample_responses(lm, batch, pad_id=PAD, eos_id=EOS, max_new_tokens=6, max_length=12)


def test_student_samples_keep_prompts_and_label_only_the_response(lm):
    torch.manual_seed(1)
    samples = sampler(lm)(dataset_batch())
    for original, sample in zip(dataset_batch(), samples):
        n = prompt_length(original)
        assert sample["input_ids"][:n] == original["input_ids"][:n]
        assert sample["labels"][:n] == [IGNORE] * n and IGNORE not in sample["labels"][n:]
        assert sample["labels"][n:] == sample["input_ids"][n:] and 1 <= len(sample["input_ids"]) - n <= 6
        assert EOS not in sample["labels"][n:-1]  # a response ends at its first EOS
    torch.manual_seed(1)
    assert sampler(lm)(dataset_batch()) == samples  # the global RNG makes it reproducible


def test_on_policy_mixed_samples_with_probability_p(lm):
    random.seed(0)
    torch.manual_seed(0)
    source = OnPolicyMixed(stream(), sampler(lm), total_steps=100, batch_size=2, p=0.5)
    sampled = sum(source.next(step) != dataset_batch() for step in range(200))
    assert 70 <= sampled <= 130  # Binomial(200, 0.5)
    assert source.counts == {"dataset": 200 - sampled, "sampled": sampled, "replayed": 0}
    assert source.metrics() == {"sampled_batches": sampled}
    never = make_source("on_policy_mixed", {"p": 0.0}, stream(), sampler(lm), 100, 2)
    assert all(never.next(s) == dataset_batch() for s in range(20))


def test_adaptive_replay_schedule_buffer_and_state(lm):
    random.seed(0)
    source = AdaptiveReplay(stream(), sampler(lm), total_steps=10, batch_size=2, capacity=4)
    assert all(source.next(s) == dataset_batch() for s in range(10))  # θ = 0: always the dataset
    assert source.counts == {"dataset": 10, "sampled": 0, "replayed": 0}
    with pytest.raises(KDBenchError, match="before begin"):
        source.end_epoch(2.0)
    source.begin(2.0)  # the evaluation before training is the reference
    source.end_epoch(2.06)
    assert source.theta == 0.0 and source.previous == 2.0  # rose by < 0.1: the reference stays
    source.end_epoch(2.12)  # 0.12 above the reference (only 0.06 above the previous epoch)
    assert source.theta == pytest.approx(0.1) and source.previous == 2.12  # θ rose: the reference follows
    source.end_epoch(2.2)
    assert source.theta == pytest.approx(0.1) and source.previous == 2.12
    source.end_epoch(1.5)  # a fall never moves θ or the reference
    assert source.theta == pytest.approx(0.1) and source.previous == 2.12
    source.theta = 1.0
    first = source.next(0)  # u < samp = 1: fresh samples, into the buffer
    assert first != dataset_batch() and list(source.buffer) == first
    source.next(0)
    assert len(source.buffer) == 4  # full
    source.theta = 0.5
    random.seed(3)
    kinds = set()
    for _ in range(50):
        u_state = random.getstate()
        u = random.random()
        random.setstate(u_state)
        batch = source.next(9)  # samp = 0.5·(1 − 0.9) = 0.05
        kinds.add("sampled" if u < 0.05 else "replayed" if u < 0.5 else "dataset")
        if 0.05 <= u < 0.5:
            assert all(ex in list(source.buffer) for ex in batch) and len(batch) == 2
        if u >= 0.5:
            assert batch == dataset_batch()
    assert {"replayed", "dataset"} <= kinds
    assert source.counts["sampled"] >= 2 and source.counts["replayed"] > 0
    assert source.metrics() == {"theta": 0.5, "theta_reference": 2.12, "sampled_batches": source.counts["sampled"],
                                "replayed_batches": source.counts["replayed"]}
    clone = AdaptiveReplay(stream(), sampler(lm), total_steps=10, batch_size=2, capacity=4)
    clone.load_state_dict(source.state_dict())
    assert clone.state_dict() == source.state_dict()


def test_unknown_source_is_named():
    with pytest.raises(KDBenchError, match="unknown data source 'offpolicy'"):
        make_source("offpolicy", {}, stream(), None, 10, 2)
