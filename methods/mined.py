"""MinED: FuseLLM's token-level fusion target, distilled from one teacher."""

import torch

from kdbench.registry import crosstok


@crosstok(alignment="mined")
def mined(student_logp: torch.Tensor, teacher_logp: torch.Tensor, *, mined_teacher: torch.Tensor,
          mined_student: torch.Tensor, kd_ratio: float = 0.1, top_k: int = 10) -> torch.Tensor:
    """MinED (FuseLLM: Wan et al., "Knowledge Fusion of Large Language Models", ICLR 2024; code
    fanqiwan/FuseLLM: `src/utils/vocab_mapping.py`, `src/utils/others.py` dtw and
    `transform_step_logits` with `vocab_align_type="soft"`, `src/utils/data_collator.py`), with one
    teacher, a cross-tokenizer method.

    Alignment: dynamic time warping over the two token sequences with the Levenshtein distance of the
    marker-free token strings (`alignment="mined"`, kdbench.crosstok.align.mined_alignment); a
    student token matched with exactly one teacher token t of the same string, or with m(t) its own
    token (FuseLLM's "soft" test, m below), gets the teacher's distribution, every other student token
    the one-hot of its own token (FuseLLM), which is the harness's cross-entropy term, so only the
    matched units are given here.
    Vocabulary: FuseLLM's map m from each teacher token to one student token, the one of the same
    text, else the one of minimum edit distance (the vocab_map's `mined_teacher` → `mined_student`,
    kdbench.crosstok.vocab.mined_map; special tokens are not mapped).
    Formula (per matched unit, q = student, p = teacher): the teacher's `top_k` most probable tokens
    t_1..t_k (over its whole vocabulary, as FuseLLM stores them), each mapped by m; a mapped id
    already taken by a more probable t_j, or a t_i that m does not map, is dropped (FuseLLM keeps the
    first); the kept K are renormalised (FuseLLM's softmax of their logits) and the student's
    cross-entropy against that target:
        p̃_i = p_{t_i} / Σ_{j∈K} p_{t_j},   MinED = − Σ_{i∈K} p̃_i log q_{m(t_i)}
    A row where no t_i is kept gets 0 (FuseLLM falls back to the base model's own distribution).
    Direction: forward (a cross-entropy: KL(p̃ ‖ q) plus the target's entropy). Range: [0, ∞).
    Defaults (FuseLLM): top_k 10 (`--top_k_logits`, ≥ 1), temperature 1 (`distill_teacher_temperature`),
    L = 0.9 · CE + 0.1 · fusion loss (`lm_loss_weight` 0.9: kd_ratio 0.1).
    Differences: m's edit distance counts normalised bytes (FuseLLM: token strings, `Ġ` → `▁`) and
    leaves special tokens out (FuseLLM maps every vocabulary entry); see kdbench.crosstok.vocab.
    No token policy composes with it (a cross-entropy against a truncated target, no space).
    docs/METHODS.md §6.
    """
    if top_k < 1:
        raise ValueError(f"mined: top_k {top_k}: give at least 1.")
    to_student = torch.full((teacher_logp.shape[-1],), -1, dtype=torch.long, device=teacher_logp.device)
    to_student[mined_teacher] = mined_student
    top = teacher_logp.topk(min(top_k, teacher_logp.shape[-1]), dim=-1)
    mapped = to_student[top.indices]  # (N, k), -1: not mapped
    earlier = torch.ones(mapped.shape[-1], mapped.shape[-1], dtype=torch.bool, device=mapped.device).tril(-1)
    taken = ((mapped[:, :, None] == mapped[:, None, :]) & earlier).any(-1)
    kept = (mapped >= 0) & ~taken
    target = torch.softmax(top.values.masked_fill(~kept, float("-inf")), dim=-1).nan_to_num(0.0)
    student = student_logp.gather(1, mapped.clamp(min=0))
    return -(target * student.masked_fill(~kept, 0.0)).sum(-1)
