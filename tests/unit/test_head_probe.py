"""The logits probe at job start (kdbench.models.check_head): the loss applies the output head to the
final hidden states itself, so a model whose forward transforms its logits after the head would
train on other logits than it samples from. Gemma-2's soft-capping is handled (SoftCappedHead); any
other transform is refused, naming the family; the shipped families pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import Gemma2Config, Gemma2ForCausalLM, GPT2LMHeadModel

from kdbench.errors import KDBenchError
from kdbench.losses import IGNORE, count_valid, objective
from kdbench.models import LastHidden, SoftCappedHead, build_random, check_head

VOCAB = 300


def gemma2() -> Gemma2ForCausalLM:
    """A tiny random Gemma-2 whose logits (up to ~24) reach its soft cap (30): initializer_range 1."""
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, initializer_range=1.0)
    torch.manual_seed(0)
    return Gemma2ForCausalLM(cfg).eval()


def test_gemma2_soft_capping_is_what_the_head_applies_and_the_loss_trains_on():
    lm = gemma2()
    assert lm.config.final_logit_softcapping == 30.0
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 64]])
    model = LastHidden(lm)
    hidden = model(ids, torch.ones_like(ids))
    own = lm(input_ids=ids).logits
    assert (lm.get_output_embeddings()(hidden) - own).abs().max() > 1  # the bare head: other logits
    assert isinstance(model.head, SoftCappedHead) and torch.allclose(model.head(hidden), own, atol=1e-5)
    check_head(lm, "config/pairs/g.yaml", "student")
    # the loss through the capped head: the model's own cross-entropy, and its gradient
    labels = ids.clone()
    labels[0, :3] = IGNORE
    parts = objective(hidden, None, labels, vocab_size=VOCAB, kd_ratio=0.0, n_global=count_valid(labels),
                      student_head=model.head)
    parts.loss.backward()
    ours = lm.get_output_embeddings().weight.grad.clone()
    lm.zero_grad()
    reference = F.cross_entropy(lm(input_ids=ids).logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    reference.backward()
    assert torch.allclose(parts.loss, reference, atol=1e-5)
    assert torch.allclose(ours, lm.get_output_embeddings().weight.grad, atol=1e-5)


def test_the_probe_catches_gemma2_where_the_cap_is_not_applied(monkeypatch):
    monkeypatch.setattr(LastHidden, "head", property(lambda self: self.lm.get_output_embeddings()))
    with pytest.raises(KDBenchError) as err:
        check_head(gemma2(), "config/pairs/g.yaml", "teacher")
    assert str(err.value).startswith("config/pairs/g.yaml: the teacher (gemma2) computes its logits otherwise than "
                                     "its output head")
    assert "Handled: Gemma-2's final_logit_softcapping" in str(err.value)


class ScaledGPT2(GPT2LMHeadModel):
    """A model whose forward transforms its logits after the head, in a way kdbench does not know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2 + 1
        return out


def test_a_model_that_transforms_its_logits_otherwise_is_refused_naming_its_family():
    lm = build_random("gpt2", {"n_layer": 1, "n_embd": 32, "n_head": 2}, Tok(), 0)
    check_head(lm, "p.yaml", "student")  # as built: its forward is the head on the last hidden state
    scaled = ScaledGPT2(lm.config)
    scaled.load_state_dict(lm.state_dict())
    with pytest.raises(KDBenchError, match=r"p.yaml: the student \(gpt2\) computes its logits otherwise .*\(a gap of "):
        check_head(scaled.eval(), "p.yaml", "student")


class Tok:
    """What build_random reads of a tokenizer."""
    bos_token_id, eos_token_id, pad_token_id = 0, 0, 1

    def __len__(self):
        return VOCAB


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "llama"])
def test_the_shipped_families_pass_the_probe(repo, family):
    pair = yaml.safe_load((repo / f"config/pairs/{family}-tiny-s_from_{family}-tiny-t.yaml").read_text())
    for role in ("teacher", "student"):
        lm = build_random(family, pair[role]["config"], Tok(), 0)
        lm.train()  # as the student is trained: the probe turns dropout off, then restores the mode
        check_head(lm, "p.yaml", role)
        assert lm.training and not isinstance(LastHidden(lm).head, SoftCappedHead)
        check_head(lm.to(torch.bfloat16), "p.yaml", role)  # a teacher in bf16: rounding is not a gap
